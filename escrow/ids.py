"""Prefixed, time-sortable ids (`ent_…`, `hld_…`) for what the service creates.

The suffix is a ULID (48-bit millisecond time, 80 random bits) in lower-case Crockford
base32, so ids sort by creation time. Encoded here with integer arithmetic because id
generation sits on every posting's path and the ULID class costs several microseconds.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """A new id such as `ent_01jd…` (26 base32 characters after the prefix)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
