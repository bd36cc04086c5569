"""The event feed (`GET /v1/events?after=`): strictly ordered, never skipping.

Events are inserted with the change that causes them. Their feed position is assigned
later by `publish`, which takes the head row's lock and numbers committed, unpositioned
events in insert order. A reader paging with `after=` can therefore never miss an event
that commits late: it simply receives a position after everything already published. The
reader publishes before it reads, so an event is visible as soon as its change commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, bindparam, select, update

from escrow.errors import InvalidCursor
from escrow.persistence.db import dumps_json, scan_in_index_order
from escrow.persistence.tables import events, sequence_heads

PUBLISH_BATCH_MAX = 5_000
_INSERT = events.insert()  # built once: every state change runs it
_ID_DIGITS = 16


def emit(conn: Connection, type_: str, data: dict[str, Any], *, now: datetime) -> None:
    """Record an event inside the caller's transaction; it exists if and only if the change commits."""
    conn.execute(_INSERT, {"type": type_, "created_at": now, "data": data})


def emit_many(conn: Connection, rows: list[tuple[str, dict[str, Any]]], *, now: datetime) -> None:
    if rows:
        conn.execute(events.insert(), [{"type": t, "created_at": now, "data": d} for t, d in rows])


def event_id(position: int) -> str:
    return f"evt_{position:0{_ID_DIGITS}d}"


def parse_event_id(value: str) -> int:
    digits = value[4:]
    # isdigit() alone takes "²" or Arabic-Indic digits, which int() then refuses or reads.
    if not value.startswith("evt_") or not (digits.isascii() and digits.isdigit()) or len(digits) > _ID_DIGITS:
        raise InvalidCursor(f"after must be an event id such as {event_id(42)}")
    return int(digits)


_PUBLISH_SQL = (
    "UPDATE events SET position = p.b_position"
    " FROM json_to_recordset(%s::json) AS p(b_seq bigint, b_position bigint) WHERE events.seq = p.b_seq"
)


def unpublished_query(batch: int) -> Select[Any]:
    """The oldest `batch` committed events without a feed position (read through ix_events_unpublished)."""
    return select(events.c.seq).where(events.c.position.is_(None)).order_by(events.c.seq).limit(batch)


def publish(engine: Engine) -> int:
    """Give committed events their feed positions; returns how many were positioned."""
    with engine.begin() as conn:
        head = conn.execute(
            select(sequence_heads.c.position).where(sequence_heads.c.name == "events").with_for_update()
        ).scalar_one()
        scan_in_index_order(conn)
        seqs = conn.execute(unpublished_query(PUBLISH_BATCH_MAX)).scalars().all()
        position = int(head)
        numbered = [{"b_seq": seq, "b_position": position + i} for i, seq in enumerate(seqs, start=1)]
        if seqs and conn.dialect.name == "postgresql":
            # One statement fed one JSON document: an executemany is a statement per event.
            conn.exec_driver_sql(_PUBLISH_SQL, (dumps_json(numbered),))
        elif seqs:
            conn.execute(
                update(events).where(events.c.seq == bindparam("b_seq")).values(position=bindparam("b_position")),
                numbered,
            )
        if seqs:
            position += len(seqs)
            conn.execute(update(sequence_heads).where(sequence_heads.c.name == "events").values(position=position))
    return len(seqs)


def read(engine: Engine, *, after: int, limit: int, types: set[str] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Published events after position `after`, oldest first; returns (events, has_more)."""
    publish(engine)
    query = select(events).where(events.c.position > after)
    if types:
        query = query.where(events.c.type.in_(sorted(types)))
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(events.c.position).limit(limit + 1)).all()
    data = [
        {"id": event_id(r.position), "type": r.type, "created_at": r.created_at, "data": r.data} for r in rows[:limit]
    ]
    return data, len(rows) > limit
