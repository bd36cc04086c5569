"""Normalisation of titles and patterns into one canonical, space-free text with an offset map.

Why space-free: obfuscation moves spaces around. `G u c c i`, `g.u.c.c.i` and `louisvuitton`
must meet the patterns `gucci` and `louis vuitton`, so matching runs on the words joined
together and word structure is kept beside the text instead of inside it:

* `bounds`: the positions where a word starts or ends. A match must start and end on one,
  which is what keeps `Gucciardi` and `Canonical` away from `gucci` and `canon`, and `1比10`
  away from `1比1` (digits and letters are word characters alike);
* hard boundaries (`Normalised.hard_bounds`): a real space between two words of two or more
  characters. A match may only cross one where its pattern has a word break too, so
  `tin can on` never reads as `canon`. A gap next to a one-character word is soft, because
  letter-spaced writing (`n i k e a i r`) gives no clue where the words were.

Characters of unspaced scripts (CJK, Thai, ...) and kept symbols (`:`) are one-character
words, so patterns in those scripts match as substrings.

The same function normalises patterns, so whatever a rule here decides, it decides for both
sides. Per-character decisions live in `escrow.screening.folding`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Final

from escrow.screening.folding import (
    BANG,
    CLOSE,
    DROP,
    EXPAND,
    GAP,
    GLUED,
    IL_CLASS,
    KEPT_SYMBOLS,
    OPEN,
    TABLE,
    UNSPACED_RANGES,
    fold,
)
from escrow.screening.limits import (
    PATTERN_CHARS_MAX,
    PATTERN_NORMALISED_CHARS_MAX,
    PATTERN_NORMALISED_CHARS_MIN,
    TITLE_CHARS_MAX,
)

_WORD_RE: Final = re.compile(r"[^\W" + UNSPACED_RANGES + r"]+|\S")
"""A run of word characters, or one character of an unspaced script or a kept symbol."""
_SOLO_RE: Final = re.compile(r"[^\w ]|[" + UNSPACED_RANGES + "]")
_BANG_LETTER_RE: Final = re.compile(
    # `!` is a letter between two letters (`b!rkin`) or alone between gaps (`l. !. t. y`);
    # after a word (`Gucci!!`) it is punctuation.
    r"(?<=[^\W_])" + BANG + r"(?=[^\W_])|(?<![^\W_]|" + BANG + ")" + BANG + r"(?![^\W_]|" + BANG + ")"
)
_PAREN_O: Final = OPEN + CLOSE
_STRIP_TABLE: Final = {ord(DROP): None, ord(GLUED): None}


@dataclass(frozen=True, slots=True)
class Normalised:
    """A title or pattern in canonical form, with the way back to the original.

    `text` is what the automaton scans; `words` and `starts` describe its words
    (`starts[k]` is where word k begins in `text`, and `starts[-1] == len(text)`);
    `bounds` is `set(starts)`. Offsets are character offsets into `source`.
    """

    source: str
    text: str
    words: tuple[str, ...]
    starts: tuple[int, ...]
    bounds: frozenset[int]
    units: str  # source translated one unit per character, markers kept (for GLUED)
    joined: str  # units without dropped characters: words separated by single-width gaps
    keep: tuple[int, ...] | None  # index in `joined` -> index in `units`; None = identity
    origin: tuple[int, ...] | None  # index in `units` -> index in `source`; None = identity
    adjacent: frozenset[int]  # word indices k touching word k-1 with no gap (`l:l`, `高仿`)

    def hard_bounds(self) -> frozenset[int]:
        """Positions in `text` where a real space separates two words of 2+ characters."""
        return hard_bounds(self.words, self.starts, self.adjacent)

    def unit_offsets(self) -> list[int]:
        """For each character of `text`, its index in `units` (see `span`)."""
        spans = [m.start() for m in _WORD_RE.finditer(self.joined)]
        out: list[int] = []
        for word, joined_start in zip(self.words, spans, strict=True):
            indices = range(joined_start, joined_start + len(word))
            out.extend(indices if self.keep is None else (self.keep[i] for i in indices))
        return out

    def offsets(self) -> list[int]:
        """For each character of `text`, the offset of the source character it came from."""
        units = self.unit_offsets()
        return units if self.origin is None else [self.origin[u] for u in units]

    def span(self, unit_offsets: list[int], start: int, end: int) -> tuple[int, int]:
        """The source span of `text[start:end]`, given `self.unit_offsets()`.

        The end covers the `)` of a `()` read as `o`, but not invisible characters that
        merely follow the match.
        """
        first, last = unit_offsets[start], unit_offsets[end - 1]
        while last + 1 < len(self.units) and self.units[last + 1] == GLUED:
            last += 1
        if self.origin is None:
            return first, last + 1
        return self.origin[first], self.origin[last] + 1


def hard_bounds(words: tuple[str, ...], starts: tuple[int, ...], adjacent: frozenset[int]) -> frozenset[int]:
    """See `Normalised.hard_bounds`; shared with the matcher's typo-corrected view."""
    return frozenset(
        starts[k] for k in range(1, len(words)) if k not in adjacent and len(words[k]) > 1 and len(words[k - 1]) > 1
    )


def _expand(text: str) -> tuple[str, tuple[int, ...]]:
    """Slow path for titles with characters that fold to several (`ß`, `ﬁ`, `½`)."""
    units: list[str] = []
    origin: list[int] = []
    for index, ch in enumerate(text):
        mapped = TABLE[ord(ch)]
        parts = fold(ch) if mapped == EXPAND else mapped
        for part in parts:
            units.append(part)
            origin.append(index)
    return "".join(units), tuple(origin)


def normalise(text: str) -> Normalised:
    """Canonical form of a title or pattern. Raises ValueError above TITLE_CHARS_MAX."""
    if len(text) > TITLE_CHARS_MAX:
        raise ValueError(f"text is {len(text)} characters, more than {TITLE_CHARS_MAX}")
    units = text.translate(TABLE)
    origin: tuple[int, ...] | None = None
    if EXPAND in units:
        units, origin = _expand(text)
    if OPEN in units:
        units = units.replace(_PAREN_O, "o" + GLUED).replace(OPEN, GAP)
    if CLOSE in units:
        units = units.replace(CLOSE, GAP)
    keep: tuple[int, ...] | None = None
    joined = units
    if DROP in units or GLUED in units:
        keep = tuple(i for i, ch in enumerate(units) if ch != DROP and ch != GLUED)
        joined = units.translate(_STRIP_TABLE)
    if BANG in joined:
        joined = _BANG_LETTER_RE.sub(IL_CLASS, joined).replace(BANG, GAP)
    adjacent: frozenset[int] = frozenset()
    if _SOLO_RE.search(joined) is None:
        words = tuple(joined.split())
    else:
        matches = list(_WORD_RE.finditer(joined))
        words = tuple(m.group() for m in matches)
        adjacent = frozenset(k for k in range(1, len(matches)) if matches[k].start() == matches[k - 1].end())
    starts = tuple(accumulate(map(len, words), initial=0))
    return Normalised(
        source=text,
        text="".join(words),
        words=words,
        starts=starts,
        bounds=frozenset(starts),
        units=units,
        joined=joined,
        keep=keep,
        origin=origin,
        adjacent=adjacent,
    )


class InvalidPattern(ValueError):
    """A keyword pattern that cannot be screened for; its message says why (API: 422)."""

    code = "invalid_pattern"


def validate_pattern(pattern: str) -> str:
    """The canonical text of a keyword pattern. Raises InvalidPattern (a ValueError).

    Rejected: more than PATTERN_CHARS_MAX characters; a pattern that normalises to fewer
    than PATTERN_NORMALISED_CHARS_MIN characters (it would hold nearly every order) or to
    more than PATTERN_NORMALISED_CHARS_MAX.
    """
    return normalise_pattern(pattern).text


def normalise_pattern(pattern: str) -> Normalised:
    """`normalise` plus the checks of `validate_pattern`, for callers that need the words."""
    if not isinstance(pattern, str):
        raise InvalidPattern(f"a pattern must be text, not {type(pattern).__name__}")
    if len(pattern) > PATTERN_CHARS_MAX:
        raise InvalidPattern(f"pattern is {len(pattern)} characters, more than {PATTERN_CHARS_MAX}")
    normalised = normalise(pattern)
    canonical = normalised.text
    if len(canonical) < PATTERN_NORMALISED_CHARS_MIN:
        shown = f"{canonical!r}" if canonical else "nothing"
        raise InvalidPattern(
            f"pattern {pattern!r} normalises to {shown}; at least "
            f"{PATTERN_NORMALISED_CHARS_MIN} letters, digits or symbols like "
            f"{KEPT_SYMBOLS!r} are needed"
        )
    if len(canonical) > PATTERN_NORMALISED_CHARS_MAX:
        raise InvalidPattern(
            f"pattern normalises to {len(canonical)} characters, more than {PATTERN_NORMALISED_CHARS_MAX}"
        )
    return normalised
