"""Named bounds of screening, in one place.

Screening runs in the checkout's critical path and its inputs come from sellers and rights
holders, so every input size and every per-title loop has a visible ceiling here. They live
beside the engine rather than in `escrow.limits` because several of them are tied to the
engine's internal encodings (see the comments); the API validates against the same names.
"""

from typing import Final

TITLE_CHARS_MAX: Final = 1_000
"""Longer titles are rejected, not truncated: a truncated title could hide a pattern past the
cut, and marketplaces cap titles far below this (typically 80-200 characters)."""

PATTERN_CHARS_MAX: Final = 200
"""A keyword pattern is a brand or a coded phrase, never a paragraph."""

PATTERN_NORMALISED_CHARS_MIN: Final = 2
"""A pattern that normalises to one character (`"a"`, `"-"`, `"I"`) would hold every order."""

PATTERN_NORMALISED_CHARS_MAX: Final = 255
"""The automaton stores each pattern's normalised length in 8 bits of its integer value."""

PATTERNS_PER_FINDING_MAX: Final = 10_000
"""Owners are encoded as `rule_index << 16 | pattern_index`, so this must stay below 65,536."""

PATTERNS_MAX: Final = 5_000_000
"""Distinct keyword patterns across all active findings (1M measured in bench/screening.py)."""

IDS_PER_FINDING_MAX: Final = 100_000
ID_CHARS_MAX: Final = 128
BRAND_CHARS_MAX: Final = 200

FUZZY_TOKEN_CHARS_MIN: Final = 6
"""Typo tolerance only for brand words of at least this length: one missing letter in a
five-letter word is too often another real word (`rolex` -> `role`)."""

FUZZY_TOKENS_MAX: Final = 200_000
"""Distinct brand words given typo tolerance; each costs a few dictionary entries."""

MATCHES_PER_TITLE_MAX: Final = 256
"""A title matching more than this is held anyway; the list in the answer stays bounded."""

PATTERN_PROFILE_CACHE_MAX: Final = 65_536
"""Patterns whose verification data is kept after a hit (computed lazily, see matcher)."""
