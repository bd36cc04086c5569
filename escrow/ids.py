"""Prefixed, time-sortable ids (`ent_…`, `hld_…`) for what the service creates."""

from __future__ import annotations

from ulid import ULID


def new_id(prefix: str) -> str:
    """A new id such as `ent_01jd…`; lower-case ULIDs sort by creation time."""
    return f"{prefix}_{str(ULID()).lower()}"
