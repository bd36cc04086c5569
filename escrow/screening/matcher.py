"""Screening of one order against every active finding, in the checkout's critical path.

Why this shape: the answer decides whether a buyer's money is held, so it must be right for
obfuscated spellings and fast whatever the number of findings. The per-title work is

1. normalise the title once (`escrow.screening.normaliser`);
2. one Aho-Corasick scan of the canonical text against every keyword pattern at once, so
   the cost depends on the title, not on how many patterns exist;
3. for each raw hit (few), cheap integer checks first: the hit must start and end on a word
   boundary, and cross a real space only where its pattern has a word break;
4. only for hits that survive, the checks that need the original characters: a real `i`
   never stands for a real `l` (`bali` is not `ball`), a digit the pattern spells as a
   digit (`1:1`) stays a digit, and a letter pattern is never met by digits alone (`8055`
   is not `boss`);
5. typo tolerance limited to a dictionary lookup of the title's words: a brand word of
   FUZZY_TOKEN_CHARS_MIN letters or more, missing one inner letter (`chnel`, `vitton`),
   is read as the brand word and the title scanned again. Only deletions: an added letter
   turns `chanel` into the English `channel`, a changed one `copy` into `cozy`.

Seller and listing findings are exact set lookups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Final, Protocol

from escrow.screening.automaton import KeywordAutomaton
from escrow.screening.folding import KIND_TABLE, exact_kind
from escrow.screening.limits import (
    BRAND_CHARS_MAX,
    FUZZY_TOKEN_CHARS_MIN,
    FUZZY_TOKENS_MAX,
    ID_CHARS_MAX,
    IDS_PER_FINDING_MAX,
    MATCHES_PER_TITLE_MAX,
    PATTERN_NORMALISED_CHARS_MAX,
    PATTERN_PROFILE_CACHE_MAX,
    PATTERNS_MAX,
    PATTERNS_PER_FINDING_MAX,
)
from escrow.screening.normaliser import (
    Normalised,
    hard_bounds,
    normalise,
    normalise_pattern,
)

KINDS: Final = frozenset({"keyword", "seller", "listing"})
STATUSES: Final = frozenset({"confirmed", "suspected"})

_LENGTH_BITS: Final = 8  # automaton value = pattern_id << 8 | normalised length
_LENGTH_MASK: Final = (1 << _LENGTH_BITS) - 1
_OWNER_BITS: Final = 16  # owner = rule_index << 16 | index of the pattern in the rule
_OWNER_MASK: Final = (1 << _OWNER_BITS) - 1
assert PATTERN_NORMALISED_CHARS_MAX <= _LENGTH_MASK  # noqa: S101  # encoding invariant
assert PATTERNS_PER_FINDING_MAX <= _OWNER_MASK  # noqa: S101  # encoding invariant


class InvalidFinding(ValueError):
    """A finding rule the matcher cannot be built with; the message names it and why."""

    code = "invalid_finding"


@dataclass(frozen=True, slots=True)
class FindingRule:
    """What an active finding asks screening to look for."""

    finding_id: str  # e.g. "fnd_01J..."
    kind: str  # "keyword" | "seller" | "listing"
    brand: str
    status: str  # "confirmed" | "suspected"
    patterns: tuple[str, ...] = ()  # keyword findings
    seller_ids: tuple[str, ...] = ()  # seller findings
    listing_ids: tuple[str, ...] = ()  # listing findings


@dataclass(frozen=True, slots=True)
class Match:
    """One reason to hold an order; `matched == title[start:end]` for keyword matches.

    For seller and listing matches `pattern` and `matched` are the id and `start == end == 0`.
    """

    finding_id: str
    kind: str
    brand: str
    pattern: str
    matched: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Profile:
    """What the checks after a hit need to know about one pattern spelling."""

    gaps: frozenset[int]  # offsets inside the pattern where it has a word break
    kinds: str  # `exact_kind` of each canonical character
    literal: frozenset[int]  # offsets of digits written as a number (`1:1`, `2024`)
    has_letters: bool


def _simple_profile(words: list[str]) -> _Profile:
    """Profile of a pattern of plain ASCII letters and digits between spaces (most of them):
    its exact kinds are its own characters, so no normalisation is needed."""
    kinds = "".join(words)
    starts = list(accumulate(map(len, words), initial=0))
    literal = {
        i for word, start in zip(words, starts, strict=False) if word.isdigit() for i in range(start, start + len(word))
    }
    return _Profile(
        gaps=frozenset(starts[1:-1]),
        kinds=kinds,
        literal=frozenset(literal),
        has_letters=not kinds.isdigit(),
    )


@lru_cache(maxsize=PATTERN_PROFILE_CACHE_MAX)
def _profile(pattern: str) -> _Profile:
    """Computed on the first hit rather than at build time, so 1M patterns cost no memory."""
    words = pattern.lower().split(" ")
    if pattern.isascii() and all(w.isalnum() for w in words):
        return _simple_profile(words)
    normalised = normalise(pattern)
    source = normalised.source
    kinds = "".join(exact_kind(source[i]) for i in normalised.offsets())
    literal: set[int] = set()
    for start, end in zip(normalised.starts, normalised.starts[1:], strict=False):
        word_kinds = kinds[start:end]
        if not any(k.isalpha() for k in word_kinds):
            literal.update(i for i in range(start, end) if kinds[i].isdigit())
    return _Profile(
        gaps=normalised.bounds - {0, len(normalised.text)},
        kinds=kinds,
        literal=frozenset(literal),
        has_letters=any(k.isalpha() for k in kinds),
    )


class _View(Protocol):
    """A title as the checks after a hit see it (the title itself, or a typo-corrected copy)."""

    text: str
    bounds: frozenset[int]
    hard: frozenset[int]

    def kind(self, index: int) -> str: ...

    def span(self, start: int, end: int) -> tuple[int, int]: ...


class _TitleView:
    """Offsets and hard boundaries of a title, computed once its first hit needs them."""

    __slots__ = ("bounds", "hard", "kinds", "normalised", "text", "units")

    def __init__(self, normalised: Normalised) -> None:
        self.normalised = normalised
        self.text = normalised.text
        self.bounds = normalised.bounds
        self.hard = normalised.hard_bounds()
        self.units = normalised.unit_offsets()
        self.kinds = normalised.source.translate(KIND_TABLE)  # one kind per source character

    def kind(self, index: int) -> str:
        unit = self.units[index]
        origin = self.normalised.origin
        return self.kinds[origin[unit] if origin is not None else unit]

    def span(self, start: int, end: int) -> tuple[int, int]:
        return self.normalised.span(self.units, start, end)


class _CorrectedView:
    """The title with one word replaced by the brand word it misspells (one letter missing)."""

    __slots__ = ("base", "bounds", "hard", "inserted", "text")

    def __init__(self, base: _TitleView, word_index: int, token: str) -> None:
        normalised = base.normalised
        word = normalised.words[word_index]
        words = (*normalised.words[:word_index], token, *normalised.words[word_index + 1 :])
        starts = tuple(accumulate(map(len, words), initial=0))
        inner = next(i for i, (a, b) in enumerate(zip(word, token, strict=False)) if a != b)
        self.base = base
        self.text = "".join(words)
        self.bounds = frozenset(starts)
        self.hard = hard_bounds(words, starts, normalised.adjacent)
        self.inserted = normalised.starts[word_index] + inner

    def _base_index(self, index: int) -> int:
        return index if index < self.inserted else index - 1

    def kind(self, index: int) -> str:
        return "*" if index == self.inserted else self.base.kind(self._base_index(index))

    def span(self, start: int, end: int) -> tuple[int, int]:
        return self.base.span(self._base_index(start), self._base_index(end - 1) + 1)


def _verified(view: _View, start: int, end: int, profile: _Profile) -> bool:
    """The checks of steps 3 and 4 of the module docstring that depend on the spelling."""
    for boundary in view.hard:
        if start < boundary < end and boundary - start not in profile.gaps:
            return False
    seen_letter = False
    for offset, pattern_kind in enumerate(profile.kinds):
        title_kind = view.kind(start + offset)
        if title_kind.isalpha():
            seen_letter = True
        if pattern_kind in "il" and title_kind in "il" and pattern_kind != title_kind:
            return False
        if offset in profile.literal and title_kind != pattern_kind:
            return False
    return seen_letter or not profile.has_letters


def _check_rule(rule: FindingRule) -> None:
    """Guard clauses for one rule. Raises InvalidFinding naming the rule."""
    name = rule.finding_id if isinstance(rule.finding_id, str) else repr(rule.finding_id)
    if not isinstance(rule.finding_id, str) or not 0 < len(rule.finding_id) <= ID_CHARS_MAX:
        raise InvalidFinding(f"finding {name}: finding_id must be 1-{ID_CHARS_MAX} characters")
    if rule.kind not in KINDS:
        raise InvalidFinding(f"finding {name}: kind {rule.kind!r} is not one of {sorted(KINDS)}")
    if rule.status not in STATUSES:
        raise InvalidFinding(f"finding {name}: status {rule.status!r} is not screened (only {sorted(STATUSES)})")
    if not isinstance(rule.brand, str) or len(rule.brand) > BRAND_CHARS_MAX:
        raise InvalidFinding(f"finding {name}: brand must be text of at most {BRAND_CHARS_MAX}")
    own = {"keyword": rule.patterns, "seller": rule.seller_ids, "listing": rule.listing_ids}
    for kind, values in own.items():
        if kind != rule.kind and values:
            raise InvalidFinding(f"finding {name}: a {rule.kind} finding carries {kind} values")
    values = own[rule.kind]
    if not values:
        raise InvalidFinding(f"finding {name}: a {rule.kind} finding needs at least one value")
    limit = PATTERNS_PER_FINDING_MAX if rule.kind == "keyword" else IDS_PER_FINDING_MAX
    if len(values) > limit:
        raise InvalidFinding(f"finding {name}: {len(values)} values, more than {limit}")
    if rule.kind != "keyword":
        for value in values:
            if not isinstance(value, str) or not 0 < len(value) <= ID_CHARS_MAX:
                raise InvalidFinding(f"finding {name}: id {value!r} is not 1-{ID_CHARS_MAX} chars")


def _deletions(token: str) -> Iterable[str]:
    """The token missing one inner letter: first and last letters are what readers anchor on,
    and dropping them makes other words (`swatch` -> `watch`)."""
    return (token[:i] + token[i + 1 :] for i in range(1, len(token) - 1))


class Matcher:
    """An immutable index of active findings; build it off the request path, share it freely.

    Thread-safe for `screen` (nothing is mutated after `build`, except an LRU cache).
    """

    __slots__ = ("_automaton", "_listings", "_owners", "_rules", "_sellers", "_typos")

    def __init__(
        self,
        rules: tuple[FindingRule, ...],
        automaton: KeywordAutomaton,
        owners: list[int | tuple[int, ...]],
        sellers: dict[str, tuple[int, ...]],
        listings: dict[str, tuple[int, ...]],
        typos: dict[str, tuple[str, ...]],
    ) -> None:
        """Use `Matcher.build`; this only assembles already-validated parts."""
        self._rules = rules
        self._automaton = automaton
        self._owners = owners
        self._sellers = sellers
        self._listings = listings
        self._typos = typos

    @classmethod
    def build(cls, rules: Iterable[FindingRule], *, typo_tolerance: bool = True) -> Matcher:
        """Index `rules`. Raises InvalidFinding or InvalidPattern (both ValueError).

        Takes seconds at a million patterns: run it off the request path and swap the
        result in atomically.
        """
        kept: list[FindingRule] = []
        automaton = KeywordAutomaton()
        owners: list[int | tuple[int, ...]] = []
        sellers: dict[str, list[int]] = {}
        listings: dict[str, list[int]] = {}
        typo_sets: dict[str, set[str]] = {}
        brand_tokens: set[str] = set()
        for rule in rules:
            _check_rule(rule)
            index = len(kept)
            kept.append(rule)
            if rule.kind == "seller":
                for seller_id in dict.fromkeys(rule.seller_ids):
                    sellers.setdefault(seller_id, []).append(index)
                continue
            if rule.kind == "listing":
                for listing_id in dict.fromkeys(rule.listing_ids):
                    listings.setdefault(listing_id, []).append(index)
                continue
            wanted: set[str] = set()
            if typo_tolerance and len(brand_tokens) < FUZZY_TOKENS_MAX:
                wanted = {w for w in normalise(rule.brand).words if len(w) >= FUZZY_TOKEN_CHARS_MIN}
            for position, pattern in enumerate(rule.patterns):
                try:
                    normalised = normalise_pattern(pattern)
                except ValueError as exc:
                    raise InvalidFinding(f"finding {rule.finding_id}: pattern {position}: {exc}") from exc
                key = normalised.text
                owner = index << _OWNER_BITS | position
                found = automaton.get(key)
                if found is None:
                    if len(owners) >= PATTERNS_MAX:
                        raise InvalidFinding(f"more than {PATTERNS_MAX} distinct patterns")
                    automaton.add(key, len(owners) << _LENGTH_BITS | len(key))
                    owners.append(owner)
                else:
                    pattern_id = found >> _LENGTH_BITS
                    previous = owners[pattern_id]
                    owners[pattern_id] = (*previous, owner) if isinstance(previous, tuple) else (previous, owner)
                for token in wanted.intersection(normalised.words):
                    brand_tokens.add(token)
                    for variant in _deletions(token):
                        typo_sets.setdefault(variant, set()).add(token)
        automaton.finalise()
        return cls(
            rules=tuple(kept),
            automaton=automaton,
            owners=owners,
            sellers={k: tuple(v) for k, v in sellers.items()},
            listings={k: tuple(v) for k, v in listings.items()},
            typos={k: tuple(sorted(v)) for k, v in typo_sets.items()},
        )

    @property
    def pattern_count(self) -> int:
        """Distinct normalised keyword patterns in the automaton."""
        return len(self._owners)

    @property
    def typo_variant_count(self) -> int:
        """Misspellings (one inner letter missing) of brand words that screening accepts."""
        return len(self._typos)

    def screen(self, title: str, seller_id: str | None = None, listing_id: str | None = None) -> list[Match]:
        """Every finding the order matches, ordered by position. Raises ValueError for a
        title over TITLE_CHARS_MAX characters."""
        found: dict[tuple[str, str, int, int], Match] = {}
        for wanted, index in ((seller_id, self._sellers), (listing_id, self._listings)):
            if wanted is None:
                continue
            for rule_index in index.get(wanted, ()):
                rule = self._rules[rule_index]
                match = Match(rule.finding_id, rule.kind, rule.brand, wanted, wanted, 0, 0)
                found[(rule.finding_id, wanted, 0, 0)] = match
        if self._owners:
            normalised = normalise(title)
            view = self._scan(normalised, None, found)
            if self._typos and not self._typos.keys().isdisjoint(normalised.words):
                base = view or _TitleView(normalised)
                for word_index, word in enumerate(normalised.words):
                    for token in self._typos.get(word, ()):
                        self._scan(normalised, _CorrectedView(base, word_index, token), found)
        ordered = sorted(found.values(), key=lambda m: (m.start, m.end, m.finding_id, m.pattern))
        return ordered[:MATCHES_PER_TITLE_MAX]

    def _scan(
        self,
        normalised: Normalised,
        corrected: _CorrectedView | None,
        found: dict[tuple[str, str, int, int], Match],
    ) -> _TitleView | None:
        """Steps 2-4 of the module docstring over the title or a corrected copy of it."""
        view: _View | None = corrected
        title_view: _TitleView | None = corrected.base if corrected is not None else None
        text = corrected.text if corrected is not None else normalised.text
        bounds = corrected.bounds if corrected is not None else normalised.bounds
        for last, value in self._automaton.scan(text):
            end = last + 1
            start = end - (value & _LENGTH_MASK)
            if start not in bounds or end not in bounds:
                continue
            if corrected is not None and not start <= corrected.inserted < end:
                continue  # found by the scan of the title itself
            if view is None:
                title_view = _TitleView(normalised)
                view = title_view
            owners = self._owners[value >> _LENGTH_BITS]
            for owner in owners if isinstance(owners, tuple) else (owners,):
                rule = self._rules[owner >> _OWNER_BITS]
                pattern = rule.patterns[owner & _OWNER_MASK]
                if not _verified(view, start, end, _profile(pattern)):
                    continue
                source_start, source_end = view.span(start, end)
                key = (rule.finding_id, pattern, source_start, source_end)
                if key not in found and len(found) < MATCHES_PER_TITLE_MAX:
                    found[key] = Match(
                        finding_id=rule.finding_id,
                        kind=rule.kind,
                        brand=rule.brand,
                        pattern=pattern,
                        matched=normalised.source[source_start:source_end],
                        start=source_start,
                        end=source_end,
                    )
        return title_view
