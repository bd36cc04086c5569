"""The tamper-evident audit trail.

Every state change inserts an audit record in the same transaction as the change, so a
record exists exactly when the change committed. Records are *not* hashed at insert time:
chaining at insert would make every request wait on the chain's head. Instead a sealer
(in the API process and in `escrow worker`, any number of them) takes the head row lock,
hashes the committed, unsealed records in sequence order and appends them to the chain:

    hash_n = SHA-256( RFC 8785 canonical JSON of {pos: n, prev: hash_(n-1), record fields} )

The chain position is assigned by the sealer, not by the insert's sequence, because
sequences commit out of order; one head row under a lock means the chain cannot fork.
`verify` recomputes the chain end to end and names the first record that does not fit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785
from sqlalchemy import Connection, Engine, Select, bindparam, select, update

from escrow.limits import AUDIT_SEAL_BATCH_MAX, REASON_CHARS_MAX
from escrow.persistence.db import dumps_json, scan_in_index_order
from escrow.persistence.tables import audit_chain_head, audit_records

GENESIS_HASH = "0" * 64
_EXACT_INT_MAX = 2**53  # RFC 8785 writes numbers as IEEE doubles: integers are exact below this
_VERIFY_BATCH = 2_000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: the principal (API key id, or `system:…`), its role, party and request."""

    principal_id: str
    role: str
    party_id: str | None = None
    request_id: str | None = None


SYSTEM = Actor(principal_id="system:worker", role="system")
_INSERT = audit_records.insert()  # built once: every state change runs it


def record(
    conn: Connection,
    actor: Actor,
    action: str,
    object_id: str,
    *,
    now: datetime,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append an audit record inside the caller's transaction (it commits with the change)."""
    conn.execute(
        _INSERT,
        {
            "occurred_at": now,
            "actor": actor.principal_id,
            "role": actor.role,
            "action": action,
            "object_id": object_id,
            "reason": reason[:REASON_CHARS_MAX] if reason else None,
            "request_id": actor.request_id,
            "data": data or {},
        },
    )


def _digest(pos: int, prev: str, row: Any) -> str:
    occurred: datetime = row.occurred_at
    payload = {
        "pos": pos,
        "prev": prev,
        "seq": row.seq,
        "occurred_at": occurred.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": row.actor,
        "role": row.role,
        "action": row.action,
        "object_id": row.object_id,
        "reason": row.reason,
        "request_id": row.request_id,
        "data": row.data,
    }
    # The fields around `data` are strings, nulls and integers by the schema, so only
    # `data` (free JSON) and the integers need checking: a tenth of the work per record.
    plain = _orjson_canonical(row.data) and _orjson_canonical(row.seq) and _orjson_canonical(pos)
    return hashlib.sha256(canonical_json(payload, known_plain=plain)).hexdigest()


def canonical_json(value: Any, *, known_plain: bool = False) -> bytes:
    """RFC 8785 canonical JSON of `value`.

    The reference implementation (`rfc8785`) is pure Python and costs ~0.2 ms a record,
    which made sealing a large share of each request's CPU. For the values audit records
    hold (strings, safe integers, booleans, nulls, lists, objects with ASCII keys, whose
    code-point order is RFC 8785's UTF-16 order) orjson with sorted keys writes the same
    bytes (proved against the reference in tests); anything else (floats, integers beyond
    2^53, other keys) goes to the reference. `known_plain`: the caller checked already.
    """
    if known_plain or _orjson_canonical(value):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(value)


def _orjson_canonical(value: Any) -> bool:
    """Whether orjson's sorted output of `value` is byte for byte RFC 8785's.

    Plain loops and exact type checks: this runs over every sealed record.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_EXACT_INT_MAX < value < _EXACT_INT_MAX)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or not _orjson_canonical(item):
                return False
        return True
    if kind is list:
        for item in value:  # noqa: SIM110  # a loop, not all(generator): this is per record
            if not _orjson_canonical(item):
                return False
        return True
    return False


_SEAL_SQL = (
    "UPDATE audit_records SET chain_pos = s.b_pos, prev_hash = s.b_prev, hash = s.b_hash"
    " FROM json_to_recordset(%s::json) AS s(b_seq bigint, b_pos bigint, b_prev text, b_hash text)"
    " WHERE audit_records.seq = s.b_seq"
)


def unsealed_query(batch: int) -> Select[Any]:
    """The oldest `batch` committed records not yet in the chain (read through ix_audit_records_unsealed)."""
    return select(audit_records).where(audit_records.c.chain_pos.is_(None)).order_by(audit_records.c.seq).limit(batch)


def seal(engine: Engine, batch: int = AUDIT_SEAL_BATCH_MAX) -> int:
    """Chain up to `batch` committed, unsealed records; returns how many were sealed."""
    with engine.begin() as conn:
        head = conn.execute(
            select(audit_chain_head.c.chain_pos, audit_chain_head.c.hash)
            .where(audit_chain_head.c.id == 1)
            .with_for_update()
        ).one()
        scan_in_index_order(conn)
        rows = conn.execute(unsealed_query(batch)).all()
        pos, prev = int(head.chain_pos), str(head.hash)
        sealed = []
        for row in rows:
            pos += 1
            digest = _digest(pos, prev, row)
            sealed.append({"b_seq": row.seq, "b_pos": pos, "b_prev": prev, "b_hash": digest})
            prev = digest
        if sealed and conn.dialect.name == "postgresql":
            # One statement fed one JSON document: an executemany is still a statement per
            # record for the server to parse, plan and run.
            conn.exec_driver_sql(_SEAL_SQL, (dumps_json(sealed),))
        elif sealed:
            conn.execute(
                update(audit_records)
                .where(audit_records.c.seq == bindparam("b_seq"))
                .values(chain_pos=bindparam("b_pos"), prev_hash=bindparam("b_prev"), hash=bindparam("b_hash")),
                sealed,
            )
        if sealed:
            conn.execute(update(audit_chain_head).where(audit_chain_head.c.id == 1).values(chain_pos=pos, hash=prev))
    return len(rows)


def seal_all(engine: Engine, batch: int = AUDIT_SEAL_BATCH_MAX) -> int:
    """Seal until caught up: until a round finds fewer than `batch` records to seal.

    Not "until none is left": under steady intake new records keep committing, and a loop
    waiting for zero never returned (the worker spent all its time here and never reached
    its other jobs). A short round means the chain had caught up with the commits.
    """
    total = 0
    while True:
        n = seal(engine, batch)
        total += n
        if n < batch:
            return total


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    sealed: int
    unsealed: int
    problem: str | None = None


def _sealed(conn: Connection, upto: int) -> Iterator[Any]:
    after = 0
    while True:
        rows = conn.execute(
            select(audit_records)
            .where(audit_records.c.chain_pos > after, audit_records.c.chain_pos <= upto)
            .order_by(audit_records.c.chain_pos)
            .limit(_VERIFY_BATCH)
        ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].chain_pos


def verify(engine: Engine) -> Verification:
    """Recompute the chain from the genesis hash; report the first record that breaks it.

    The head is read first and the chain verified up to it: on PostgreSQL every page is a
    fresh snapshot, and a sealer that committed while the pages were read moved the head
    past the last record verified, which read as records removed from the end. What a
    sealer appends meanwhile is left for the next run.
    """
    with engine.connect() as conn:
        head = conn.execute(select(audit_chain_head).where(audit_chain_head.c.id == 1)).one()
        expected_pos, prev = 0, GENESIS_HASH
        for row in _sealed(conn, head.chain_pos):
            expected_pos += 1
            where = f"audit record seq={row.seq} at chain position {row.chain_pos}"
            if row.chain_pos != expected_pos:
                return Verification(
                    False,
                    expected_pos - 1,
                    0,
                    f"chain position {expected_pos} is missing (next found: {where}): a record was removed or moved",
                )
            if row.prev_hash != prev:
                return Verification(
                    False,
                    expected_pos - 1,
                    0,
                    f"{where} does not follow the previous record: records were reordered or removed",
                )
            if _digest(expected_pos, prev, row) != row.hash:
                return Verification(False, expected_pos - 1, 0, f"{where} was altered after sealing")
            prev = row.hash
        unsealed = len(conn.execute(select(audit_records.c.seq).where(audit_records.c.chain_pos.is_(None))).all())
        beyond = conn.execute(
            select(audit_records.c.seq).where(audit_records.c.chain_pos > head.chain_pos).limit(1)
        ).first()
        # A sealer commits its records and the head together: records past the head read
        # first are a sealer's only if the head has moved since; otherwise they were added.
        if beyond is not None and conn.execute(select(audit_chain_head.c.chain_pos)).scalar_one() == head.chain_pos:
            return Verification(
                False,
                expected_pos,
                unsealed,
                f"audit record seq={beyond.seq} is sealed past the chain's head ({head.chain_pos}): it was added",
            )
    if head.chain_pos != expected_pos or head.hash != prev:
        return Verification(
            False,
            expected_pos,
            unsealed,
            f"the chain ends at position {expected_pos} but its head says {head.chain_pos}: "
            "records at the end were removed",
        )
    return Verification(True, expected_pos, unsealed)


def trail(conn: Connection, object_id: str, *, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """Audit records about one object, oldest first, for GET /v1/audit."""
    rows = conn.execute(
        select(audit_records)
        .where(audit_records.c.object_id == object_id, audit_records.c.seq > after_seq)
        .order_by(audit_records.c.seq)
        .limit(limit)
    ).all()
    return [
        {
            "seq": r.seq,
            "occurred_at": r.occurred_at,
            "actor": r.actor,
            "role": r.role,
            "action": r.action,
            "object_id": r.object_id,
            "reason": r.reason,
            "request_id": r.request_id,
            "data": r.data,
            "sealed": r.hash is not None,
            "hash": r.hash,
        }
        for r in rows
    ]
