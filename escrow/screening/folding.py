# ruff: noqa: RUF001, RUF002, RUF003  # look-alike characters are this module's subject
"""Per-character folding: what each code point of a title or pattern is taken to mean.

Counterfeiters defeat keyword filters with characters that *look* like the brand's letters:
fullwidth forms (`ｇｕｃｃｉ`), accents (`hérmés`), Cyrillic and Greek look-alikes (`гоӏех`),
leet digits and symbols (`r0l3x`, `ch@nel`, `$uper`), invisible format characters
(`Ro\u200dlex`) and separators between letters (`g.u.c.c.i`). This module decides, once per
code point, which canonical character (if any) each one stands for, so the normaliser can do
the whole title with one `str.translate` call instead of a Python loop per character.

The decisions, in order:

1. whitespace is a gap; format, control and combining characters are dropped (they are
   invisible, so they cannot be part of what a buyer reads);
2. punctuation and symbols are gaps, except a few that carry meaning in coded language
   (`1:1`, `D&G`) which stay as one-character words, and leet glyphs (`@ $ € !`);
3. Unicode NFKC (fullwidth, ligatures, mathematical alphanumerics), case folding, accent
   stripping (NFD without combining marks);
4. confusable folding: a non-ASCII character that Unicode TR39 lists as a homoglyph of an
   ASCII letter or digit becomes that letter. The table is built from the `confusables.json`
   shipped by the maintained `confusable_homoglyphs` package, not typed in by hand;
5. leet classes: `0->o 3->e 4->a 5->s 7->t 8->b @->a $->s €->e`, and `i l 1 !` all become
   one class `l`, because `1` and `!` are written for both `i` and `l`. The matcher verifies
   after a hit that a real `i` was not matched against a real `l` (`bali` vs `ball`).

`exact_kind` keeps what step 5 throws away (`i` vs `l`, digit vs letter) for that check.
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache
from importlib import resources
from typing import Final

DROP: Final = "\x00"  # invisible: removed, offsets skip it
GAP: Final = " "  # word separator
OPEN: Final = "\x02"  # "(": "()" reads as "o", otherwise a gap
CLOSE: Final = "\x03"  # ")"
EXPAND: Final = "\x04"  # folds to several characters (ß -> ss): the normaliser's slow path
BANG: Final = "\x05"  # "!": a letter between letters (b!rkin), punctuation after a word
GLUED: Final = "\x06"  # the ")" of a "()" read as "o": dropped, but part of the match span
MARKERS: Final = frozenset({DROP, OPEN, CLOSE, EXPAND, BANG, GLUED})

IL_CLASS: Final = "l"
"""Canonical letter for the class {i, l, 1, !}: both letters are written with both glyphs."""

LEET: Final[dict[str, str]] = {
    "0": "o",
    "1": IL_CLASS,
    "i": IL_CLASS,
    "l": IL_CLASS,
    "3": "e",
    "4": "a",
    "5": "s",
    "7": "t",
    "8": "b",
    "@": "a",
    "$": "s",
    "€": "e",
}

KEPT_SYMBOLS: Final = ":&#%+"
"""Symbols that carry meaning in coded language (`1:1`, `D&G`); each is a word of its own."""

UNSPACED_RANGES: Final = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u2e80-\u2fdf"  # CJK radicals
    "\u3005-\u3007\u3021-\u3029\u3038-\u303b"
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0003134f"
)
"""Scripts written without spaces: every character is a word, so patterns match as substrings."""

_SEPARATOR_CATEGORIES: Final = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sk", "Sm", "So", "Sc"})
_DROPPED_CATEGORIES: Final = frozenset({"Cf", "Cc", "Mn", "Me", "Cs", "Co"})
_INVISIBLE_LETTERS: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u034f")
"""Fillers and blanks that Unicode classifies as letters or symbols but render as nothing."""
_SEPARATOR_ASCII_OVERRIDES: Final = {"(": OPEN, ")": CLOSE, "!": BANG}
_FOLD_ROUNDS_MAX: Final = 4  # folding converges in 2 rounds in practice; bounded anyway


def _load_confusables() -> dict[str, list[str]]:
    """Homoglyph lists of the TR39 data shipped with `confusable_homoglyphs`."""
    raw = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8")
    data: dict[str, list[dict[str, str]]] = json.loads(raw)
    # The package wraps right-to-left glyphs in LRM marks for display; they are not data.
    return {char: [entry["c"].replace("\u200e", "") for entry in entries] for char, entries in data.items()}


def _plain(text: str) -> str:
    """NFKC, case fold and accent strip: the non-confusable part of folding."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    bare = "".join(ch for ch in unicodedata.normalize("NFD", folded) if unicodedata.category(ch) != "Mn")
    # Recompose what is not an accent (Hangul syllables decompose into jamo under NFD).
    return unicodedata.normalize("NFC", bare)


def _ascii_alnum(text: str) -> str | None:
    plain = _plain(text)
    return plain if len(plain) == 1 and plain.isascii() and plain.isalnum() else None


def _build_prototypes() -> dict[str, str]:
    """Map each non-ASCII homoglyph of an ASCII letter or digit to that letter or digit.

    A letter is preferred to a digit (`О` is `o`, not `0`); a direct homoglyph to one found
    through a neighbour (`т` -> `ᴛ` -> ... has no direct ASCII homoglyph, but its capital
    `Т` has, which `_confusable` tries). Two hops at most, so unrelated glyphs do not chain.
    """
    graph = _load_confusables()
    prototypes: dict[str, str] = {}
    for char, glyphs in graph.items():
        if len(char) != 1 or char.isascii():
            continue  # ASCII is the target alphabet: `m` is not folded to `rn`
        for hop in (glyphs, [g2 for g in glyphs for g2 in graph.get(g, ())]):
            # A glyph plus combining marks counts too (`ø` is listed as `o` + U+0338).
            targets = [t for t in (_ascii_alnum(g) for g in hop) if t]
            if targets:
                letters = [t for t in targets if t.isalpha()]
                prototypes[char] = (letters or targets)[0]
                break
    return prototypes


_PROTOTYPES: Final = _build_prototypes()


def _confusable(ch: str) -> str:
    """The ASCII letter `ch` impersonates, trying its capital and small forms too."""
    for form in (ch, ch.upper(), ch.lower()):
        proto = _PROTOTYPES.get(form) if len(form) == 1 else None
        if proto is not None:
            return proto
    return ch


def _is_unspaced(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x0E00 <= cp <= 0x0EFF
        or 0x1000 <= cp <= 0x109F
        or 0x1780 <= cp <= 0x17FF
        or 0x2E80 <= cp <= 0x2FDF
        or 0x3005 <= cp <= 0x3007
        or 0x3021 <= cp <= 0x3029
        or 0x3038 <= cp <= 0x303B
        or 0x3040 <= cp <= 0x30FF
        or 0x31F0 <= cp <= 0x31FF
        or 0x3400 <= cp <= 0x4DBF
        or 0x4E00 <= cp <= 0x9FFF
        or 0xF900 <= cp <= 0xFAFF
        or 0x20000 <= cp <= 0x3134F
    )


def _fold_one(ch: str, *, leet: bool) -> str:
    """One round of folding for one character: the decisions listed in the module docstring."""
    if ch.isspace():
        return GAP
    category = unicodedata.category(ch)
    if category in _DROPPED_CATEGORIES or ch in _INVISIBLE_LETTERS:
        return ""
    if ch.isascii() and ch in _SEPARATOR_ASCII_OVERRIDES:
        return _SEPARATOR_ASCII_OVERRIDES[ch] if leet else ch
    if ch in KEPT_SYMBOLS or (ch in LEET and not ch.isalnum()):
        return LEET.get(ch, ch) if leet else ch
    if category in _SEPARATOR_CATEGORIES:
        # NFKC first: a fullwidth `＠` or `（` is the ASCII glyph, not a separator.
        compat = unicodedata.normalize("NFKC", ch)
        if compat != ch and len(compat) == 1 and not compat.isspace():
            return _fold_one(compat, leet=leet)
        return GAP
    out: list[str] = []
    for part in unicodedata.normalize("NFKC", ch):
        if part != ch and not part.isalnum():
            out.append(_fold_one(part, leet=leet))
            continue
        if not part.isascii() and not _is_unspaced(part):
            part = _confusable(part)
        for plain in _plain(part):
            if not plain.isascii() and not _is_unspaced(plain):
                plain = _confusable(plain)
            out.append(LEET.get(plain, plain) if leet else plain)
    return "".join(out)


@cache  # bounded by the number of code points (1.1M)
def fold(ch: str, *, leet: bool = True) -> str:
    """The canonical text `ch` stands for: "" (dropped), " " (gap), a marker, or characters.

    Folding is repeated until it is stable so that canonical output folds to itself, which
    makes `normalise` idempotent.
    """
    result = _fold_one(ch, leet=leet)
    for _ in range(_FOLD_ROUNDS_MAX):
        if all(c in MARKERS or c == GAP for c in result):
            return result
        again = "".join(c if c in MARKERS or c == GAP else _fold_one(c, leet=leet) for c in result)
        if again == result:
            return result
        result = again
    return result


class _TranslationTable(dict[int, str]):
    """`str.translate` table filled on first sight of each code point.

    Every value is exactly one character, so the translated string has the title's length
    and offsets survive; a character that folds to several becomes EXPAND and the
    normaliser takes its slow path for that title.
    """

    def __missing__(self, codepoint: int) -> str:
        folded = fold(chr(codepoint))
        value = DROP if folded == "" else folded if len(folded) == 1 else EXPAND
        self[codepoint] = value
        return value


TABLE: Final = _TranslationTable()
for _cp in range(0x250):  # ASCII and Latin: most titles never reach __missing__
    TABLE[_cp]  # warm the cache: the lookup's side effect is the point
for _cp in range(0xFF00, 0xFFF0):  # fullwidth forms, the most common disguise
    TABLE[_cp]


AMBIGUOUS_IL: Final = "I"
"""`exact_kind` of a look-alike of i or l (`ӏ`, `і`, `ǀ`): a letter, but which one is unknown."""


@cache
def exact_kind(ch: str) -> str:
    """What `ch` literally is before leet classes, for the matcher's checks after a hit.

    An ASCII letter or digit when `ch` is one up to NFKC, case and accents; the confusable's
    letter when it impersonates one, except that look-alikes of `i`/`l` (the Cyrillic
    palochka serves for both) give AMBIGUOUS_IL; "*" for a glyph standing in for a letter
    (`@`, `!`, `()`) or a character with no ASCII reading.
    """
    plain = _ascii_alnum(ch)
    if plain is not None:
        return plain
    folded = fold(ch, leet=False)
    if len(folded) != 1 or not folded.isascii() or not folded.isalnum():
        return "*"
    return AMBIGUOUS_IL if folded in "il" else folded


class _KindTable(dict[int, str]):
    """`str.translate` table giving each character its `exact_kind` (always one character)."""

    def __missing__(self, codepoint: int) -> str:
        value = exact_kind(chr(codepoint))
        self[codepoint] = value
        return value


KIND_TABLE: Final = _KindTable()
