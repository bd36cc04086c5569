"""The transactional outbox: external instructions written with their ledger entries.

A use case that puts money in transit calls `enqueue` inside its own transaction, so the
instruction exists exactly when the money moved in the ledger. `escrow worker` then
delivers it (escrow.worker):

    claim     short transaction: due rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite
              serializes writers) get a lease token and an expiry, pending rows count an
              attempt; a worker killed after this simply lets its lease run out
    call      no transaction open: the rail, with the instruction's stable key; a row that
              was attempted before is first looked up by key (never resent blindly)
    record    second transaction: the outcome is applied to the payout or refund (ledger
              entry, event, audit) and the row moves on, only if the lease is still ours

States: `pending` (due for delivery at next_attempt_at), `sent` (the rail took it; the
outcome comes by webhook, or by a status poll at next_attempt_at), `done`, `dead` (attempts
exhausted or refused as malformed: a human looks, the money stays in transit).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, and_, or_, select, update

from escrow.ids import new_id
from escrow.money import Money
from escrow.persistence.tables import outbox_instructions
from escrow.ports import BankRail, CardRail

Rail = Literal["bank", "card"]
Kind = Literal["payout", "refund"]
OutcomeKind = Literal["accepted", "booked", "returned", "rejected", "succeeded", "failed"]
FINAL_OUTCOMES = frozenset({"booked", "returned", "rejected", "succeeded", "failed"})

Verifier = Callable[[Mapping[str, str], bytes, Sequence[str], datetime], str]


@dataclass(frozen=True)
class Rails:
    """What the outbox and the webhook receiver need from outside; built by bootstrap."""

    bank: BankRail
    card: CardRail
    cipher: Any  # escrow.service.payout_accounts.AccountCipher (kept untyped here to avoid a cycle)
    verify: Verifier
    webhook_secrets: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a rail said happened to one instruction (from a receipt, a status or a webhook)."""

    kind: OutcomeKind
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Instruction:
    id: str
    rail: Rail
    kind: Kind
    key: str
    object_id: str
    amount: Money
    destination: dict[str, Any]
    state: str
    attempts: int
    lease_token: str | None

    @staticmethod
    def of(row: Any) -> Instruction:
        return Instruction(
            id=row.id,
            rail=row.rail,
            kind=row.kind,
            key=row.key,
            object_id=row.object_id,
            amount=Money(int(row.amount), row.currency),
            destination=dict(row.destination),
            state=row.state,
            attempts=int(row.attempts),
            lease_token=row.lease_token,
        )


def enqueue(
    conn: Connection,
    *,
    rail: Rail,
    kind: Kind,
    key: str,
    object_id: str,
    amount: Money,
    destination: dict[str, Any],
    now: datetime,
) -> str:
    """Write one instruction inside the caller's transaction; it is due at once."""
    instruction_id = new_id("ins")
    conn.execute(
        outbox_instructions.insert(),
        {
            "id": instruction_id,
            "rail": rail,
            "kind": kind,
            "key": key,
            "object_id": object_id,
            "currency": amount.currency,
            "amount": amount.amount_minor,
            "destination": destination,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        },
    )
    return instruction_id


def backoff(attempts: int, base_ms: int, cap_ms: int) -> timedelta:
    """Exponential backoff with equal jitter and a cap (tenacity's wait_random_exponential shape)."""
    ceiling = min(cap_ms, base_ms * 2 ** min(max(attempts - 1, 0), 40))
    return timedelta(milliseconds=ceiling / 2 + random.uniform(0, ceiling / 2))  # noqa: S311  # jitter, not crypto


def claim(conn: Connection, now: datetime, *, lease: timedelta, batch: int) -> list[Instruction]:
    """Lease up to `batch` due instructions to this caller; pending ones count one more attempt."""
    due = (
        select(outbox_instructions.c.id)
        .where(
            outbox_instructions.c.state.in_(("pending", "sent")),
            outbox_instructions.c.next_attempt_at <= now,
            or_(outbox_instructions.c.leased_until.is_(None), outbox_instructions.c.leased_until < now),
        )
        .order_by(outbox_instructions.c.next_attempt_at)
        .limit(batch)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list(conn.execute(due).scalars())
    if not ids:
        return []
    token = new_id("lse")
    for instruction_id in ids:
        row = conn.execute(select(outbox_instructions).where(outbox_instructions.c.id == instruction_id)).one()
        conn.execute(
            update(outbox_instructions)
            .where(outbox_instructions.c.id == instruction_id)
            .values(
                lease_token=token,
                leased_until=now + lease,
                attempts=row.attempts + (1 if row.state == "pending" else 0),
                updated_at=now,
            )
        )
    rows = conn.execute(select(outbox_instructions).where(outbox_instructions.c.id.in_(ids))).all()
    return [Instruction.of(r) for r in sorted(rows, key=lambda r: ids.index(r.id))]


def renew(conn: Connection, instruction_id: str, token: str | None, now: datetime, *, lease: timedelta) -> bool:
    """Extend our lease just before the rail call, so each call gets a whole lease to itself.

    False when the lease ran out (another worker may own the row now): skip it, never call.
    """
    result = conn.execute(
        update(outbox_instructions)
        .where(
            outbox_instructions.c.id == instruction_id,
            outbox_instructions.c.lease_token == token,
            outbox_instructions.c.leased_until > now,
        )
        .values(leased_until=now + lease)
    )
    return result.rowcount == 1


def lock_by_key(conn: Connection, key: str) -> Any:
    """The instruction with `key`, locked; None when it is not one of ours."""
    return conn.execute(
        select(outbox_instructions).where(outbox_instructions.c.key == key).with_for_update()
    ).one_or_none()


def lock_by_object(conn: Connection, object_id: str) -> Any:
    return conn.execute(
        select(outbox_instructions)
        .where(outbox_instructions.c.object_id == object_id)
        .order_by(outbox_instructions.c.created_at)
        .with_for_update()
    ).first()


def mark(
    conn: Connection,
    instruction_id: str,
    now: datetime,
    *,
    state: str,
    next_attempt_at: datetime | None = None,
    rail_state: str | None = None,
    last_error: str | None = None,
    destination: dict[str, Any] | None = None,
) -> None:
    """Move an instruction on and give its lease back."""
    values: dict[str, Any] = {"state": state, "lease_token": None, "leased_until": None, "updated_at": now}
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if rail_state is not None:
        values["rail_state"] = rail_state
    if last_error is not None:
        values["last_error"] = last_error[:2000]
    if destination is not None:
        values["destination"] = destination
    conn.execute(update(outbox_instructions).where(outbox_instructions.c.id == instruction_id).values(**values))


def still_ours(row: Any, token: str | None) -> bool:
    """A recorded outcome counts only while the lease that produced it is held."""
    return row is not None and token is not None and row.lease_token == token


def open_instructions(conn: Connection) -> int:
    """How many instructions are not finished (pending or sent)."""
    return len(
        conn.execute(
            select(outbox_instructions.c.id).where(and_(outbox_instructions.c.state.in_(("pending", "sent"))))
        ).all()
    )
