"""Prefixed, time-sortable ids (`ent_…`, `hld_…`) for what the service creates.

The suffix is a ULID (48-bit millisecond time, 80 random bits) in lower-case Crockford
base32, so ids sort by creation time. Id generation sits on the path of every posting,
audit record and event, so the 26 digits are looked up two at a time in a table of the
1,024 digit pairs (about 1 us) instead of being divided out one by one (about 8 us).
"""

from __future__ import annotations

import os
import time
from typing import Final

_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS: Final = tuple(a + b for a in _ALPHABET for b in _ALPHABET)  # 10 bits -> 2 digits
_PAIR_SHIFTS: Final = tuple(range(115, 0, -10))  # bits 124..5; bits 127..125 and 4..0 stand alone


def new_id(prefix: str) -> str:
    """A new id such as `ent_01jd…` (26 base32 characters after the prefix)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{encode_ulid(value)}"


def encode_ulid(value: int) -> str:
    """The 26-character Crockford base32 form of a 128-bit `value`, most significant first."""
    pairs = _PAIRS
    middle = "".join([pairs[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])
    return _ALPHABET[value >> 125] + middle + _ALPHABET[value & 31]
