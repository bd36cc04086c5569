"""Payouts (DESIGN §2 flow 8, §3 Payout): `pending` → `submitted` → `paid` | `failed` | `returned`.

Proceeds become payable in several places (confirmation, release, unfreeze); rather than
touching each, a worker sweep pays out each seller's whole `seller:{id}:payable` balance per
currency when the seller has a payout account (party id = seller id) and is not frozen:

    create     payable → in_transit:payouts, payout row and outbox instruction, one commit
    booked     in_transit:payouts → clearing:bank                          (paid)
    rejected   in_transit:payouts → where it came from                      (failed)
    returned   clearing:bank → where it came from (a return that arrives before its booking
               posts the booking first, so the bank statement still matches entry by entry)

"Where it came from" is the source account, or `seller:{id}:frozen` if the seller is frozen
by then. A party whose last payout in a currency failed or was returned is not swept again
until its payout account changes or finance retries that payout, so a closed account is not
paid into again and again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, and_, exists, func, literal, select, update
from sqlalchemy.orm import aliased

from escrow import audit, events, outbox
from escrow.audit import SYSTEM, Actor
from escrow.errors import IllegalTransition, InsufficientFunds, NotFound
from escrow.ids import new_id
from escrow.ledger import Ledger, transfer
from escrow.ledger.chart import IN_TRANSIT_PAYOUTS, seller_account
from escrow.limits import AMOUNT_MINOR_MAX
from escrow.money import Money
from escrow.outbox import Outcome
from escrow.persistence.db import Each, transaction
from escrow.persistence.tables import ledger_balances, payout_accounts, payouts
from escrow.service.orders import seller_is_frozen
from escrow.service.payout_accounts import destination_of

log = structlog.get_logger(__name__)

CLEARING_BANK = "clearing:bank"
SWEEP_BATCH_MAX = 500
FINAL = frozenset({"failed", "returned"})


def payout_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "party_id": row.party_id,
        "seller_id": row.seller_id,
        "amount": {"amount": row.amount, "currency": row.currency},
        "status": row.status,
        "end_to_end_id": row.end_to_end_id,
        "destination": {"iban_masked": row.iban_masked},
        "failure_reason": row.failure_reason,
        "retry_of": row.retry_of,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def get_payout(conn: Connection, payout_id: str) -> dict[str, Any]:
    row = conn.execute(select(payouts).where(payouts.c.id == payout_id)).one_or_none()
    if row is None:
        raise NotFound(f"payout {payout_id} not found")
    return payout_view(row)


def list_payouts(
    conn: Connection, *, status: str | None, party_id: str | None, starting_after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    query = select(payouts)
    if status:
        query = query.where(payouts.c.status == status)
    if party_id:
        query = query.where(payouts.c.party_id == party_id)
    if starting_after:
        query = query.where(payouts.c.id > starting_after)
    rows = conn.execute(query.order_by(payouts.c.id).limit(limit + 1)).all()
    return [payout_view(r) for r in rows[:limit]], len(rows) > limit


# --- creating payouts -------------------------------------------------------------------------


def _create(
    conn: Connection,
    actor: Actor,
    now: datetime,
    *,
    party_id: str,
    seller_id: str | None,
    source: str,
    amount: Money,
    destination: dict[str, Any],
    retry_of: str | None = None,
) -> dict[str, Any]:
    payout_id = new_id("pay")
    Ledger(conn).post(
        transfer("payout_submitted", source, IN_TRANSIT_PAYOUTS, amount, memo=payout_id),
        now=now,
        request_id=actor.request_id,
    )
    row = {
        "id": payout_id,
        "party_id": party_id,
        "seller_id": seller_id,
        "source_account": source,
        "currency": amount.currency,
        "amount": amount.amount_minor,
        "status": "pending",
        "end_to_end_id": payout_id,  # 30 characters: fits ISO 20022 Max35Text
        "booked": False,
        "iban_masked": destination["iban_masked"],
        "failure_reason": None,
        "retry_of": retry_of,
        "created_at": now,
        "updated_at": now,
    }
    conn.execute(payouts.insert(), row)
    outbox.enqueue(
        conn,
        rail="bank",
        kind="payout",
        key=payout_id,
        object_id=payout_id,
        amount=amount,
        destination=destination,
        now=now,
    )
    data = {"payout_id": payout_id, "party_id": party_id, "seller_id": seller_id, "amount": amount.to_wire()}
    audit.record(conn, actor, "payout.created", payout_id, now=now, data={**data, "retry_of": retry_of})
    events.emit(conn, "payout.created", data, now=now)
    return row


def _blocked(conn: Connection, party_id: str, currency: str) -> bool:
    """True while the party's last failed or returned payout in `currency` awaits a new account or a retry."""
    retried = aliased(payouts)
    last_bad = conn.execute(
        select(func.max(payouts.c.updated_at)).where(
            payouts.c.party_id == party_id,
            payouts.c.currency == currency,
            payouts.c.status.in_(FINAL),
            ~exists().where(retried.c.retry_of == payouts.c.id),
        )
    ).scalar_one_or_none()
    if last_bad is None:
        return False
    account_at = conn.execute(
        select(payout_accounts.c.updated_at).where(payout_accounts.c.party_id == party_id)
    ).scalar_one_or_none()
    return account_at is None or bool(account_at <= last_bad)


def _pay_out_seller(conn: Connection, seller_id: str, currency: str, now: datetime) -> str | None:
    if seller_is_frozen(conn, seller_id, now):  # share lock: a freeze waits for this payout
        return None
    if _blocked(conn, seller_id, currency):
        return None
    if Ledger(conn).balance(seller_account(seller_id, "owed"), currency) < 0:
        return None  # the waterfall: advance refunds are recovered before the seller is paid
    source = seller_account(seller_id, "payable")
    balance = Ledger(conn).balance(source, currency)
    destination = destination_of(conn, seller_id)
    if balance <= 0 or destination is None:
        return None
    row = _create(
        conn,
        SYSTEM,
        now,
        party_id=seller_id,
        seller_id=seller_id,
        source=source,
        # One payout moves at most one amount's bound; a balance beyond it (the sum of many
        # orders) is paid by the next rounds, a payout each.
        amount=Money(min(balance, AMOUNT_MINOR_MAX), currency),
        destination=destination,
    )
    return str(row["id"])


def sweep(engine: Engine, now: datetime, *, batch: int = SWEEP_BATCH_MAX) -> int:
    """Pay out every payable seller balance that can be paid; returns how many payouts were created."""
    with engine.connect() as conn:
        # Driven from the payout accounts, each looked up by its exact balance key: a LIKE on
        # the account name cannot use the index under a non-C collation, and scanned every
        # balance row (one per order) on every worker round.
        candidates = conn.execute(
            select(ledger_balances.c.account, ledger_balances.c.currency)
            .select_from(payout_accounts)
            .join(
                ledger_balances,
                ledger_balances.c.account == literal("seller:").concat(payout_accounts.c.party_id).concat(":payable"),
            )
            .where(ledger_balances.c.balance > 0)
            .group_by(ledger_balances.c.account, ledger_balances.c.currency)
            .limit(batch)
        ).all()
    created = 0
    each = Each("sweep_payouts")
    for account, currency in candidates:
        seller_id = account[len("seller:") : -len(":payable")]

        def work(conn: Connection, s: str = seller_id, c: str = currency) -> str | None:
            return _pay_out_seller(conn, s, c, now)

        def pay(work: Callable[[Connection], str | None] = work) -> str | None:
            try:
                return transaction(engine, work)
            except InsufficientFunds:
                return None  # another worker paid this balance out a moment ago

        # One seller that cannot be paid must not stop the others' payouts.
        made = each.run(f"{seller_id} {currency}", pay)
        if made is not None:
            created += 1
            log.info("payout_created", payout_id=made, seller_id=seller_id, currency=currency)
    each.done()
    return created


def retry_payout(conn: Connection, actor: Actor, now: datetime, payout_id: str) -> dict[str, Any]:
    """A new payout (new EndToEndId) for a failed or returned one, to the party's current account.

    Raises NotFound, IllegalTransition (not failed/returned, already retried, seller frozen,
    no payout account), InsufficientFunds (the money has been paid out or moved since).
    """
    head = conn.execute(select(payouts).where(payouts.c.id == payout_id)).one_or_none()
    if head is None:
        raise NotFound(f"payout {payout_id} not found")
    if head.seller_id is not None and seller_is_frozen(conn, head.seller_id, now):
        raise IllegalTransition(f"seller {head.seller_id} is frozen: its proceeds cannot be paid out")
    old = conn.execute(select(payouts).where(payouts.c.id == payout_id).with_for_update()).one()
    if old.status not in FINAL:
        raise IllegalTransition(f"payout {payout_id} is {old.status}; only failed or returned payouts are retried")
    if conn.execute(select(payouts.c.id).where(payouts.c.retry_of == payout_id)).first() is not None:
        raise IllegalTransition(f"payout {payout_id} was already retried")
    destination = destination_of(conn, old.party_id)
    if destination is None:
        raise IllegalTransition(f"party {old.party_id} has no payout account")
    row = _create(
        conn,
        actor,
        now,
        party_id=old.party_id,
        seller_id=old.seller_id,
        source=old.source_account,
        amount=Money(int(old.amount), old.currency),
        destination=destination,
        retry_of=payout_id,
    )
    return get_payout(conn, str(row["id"]))


# --- outcomes from the bank -------------------------------------------------------------------


def lock_payout(conn: Connection, payout_id: str, now: datetime) -> tuple[Any, bool]:
    """(payout row, seller frozen?) locked in the global order: seller (shared) before payout."""
    seller_id = conn.execute(select(payouts.c.seller_id).where(payouts.c.id == payout_id)).scalar_one_or_none()
    frozen = seller_is_frozen(conn, seller_id, now) if seller_id else False
    row = conn.execute(select(payouts).where(payouts.c.id == payout_id).with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"payout {payout_id} not found")
    return row, frozen


def apply_outcome(conn: Connection, p: Any, frozen: bool, outcome: Outcome, now: datetime) -> bool:
    """Apply a bank outcome to the locked payout `p`; False when it changes nothing (duplicate, late)."""
    money = Money(int(p.amount), p.currency)
    back_to = seller_account(p.seller_id, "frozen") if frozen and p.seller_id else p.source_account
    ledger = Ledger(conn)
    kind = outcome.kind
    if p.status in FINAL or kind in ("succeeded", "failed"):
        return False
    if kind == "accepted":
        if p.status != "pending":
            return False
        _set(conn, p, now, status="submitted")
        audit.record(conn, SYSTEM, "payout.submitted", p.id, now=now, data={"amount": money.to_wire()})
        events.emit(conn, "payout.submitted", _event(p, money), now=now)
        return True
    if kind == "rejected":
        if p.booked:
            return False  # a rejection cannot follow a booking; the booking stands
        ledger.post(transfer("payout_failed", IN_TRANSIT_PAYOUTS, back_to, money, memo=p.id), now=now)
        _set(conn, p, now, status="failed", failure_reason=outcome.reason or "rejected")
        _announce(conn, p, money, "payout.failed", now, reason=outcome.reason, to=back_to)
        return True
    changed = False
    if not p.booked:  # booked, or a return that overtook its booking
        ledger.post(transfer("payout_paid", IN_TRANSIT_PAYOUTS, CLEARING_BANK, money, memo=p.id), now=now)
        _set(conn, p, now, status="paid", booked=True)
        _announce(conn, p, money, "payout.paid", now)
        changed = True
    if kind == "returned":
        ledger.post(transfer("payout_returned", CLEARING_BANK, back_to, money, memo=p.id), now=now)
        _set(conn, p, now, status="returned", failure_reason=outcome.reason or "returned")
        _announce(conn, p, money, "payout.returned", now, reason=outcome.reason, to=back_to)
        changed = True
    return changed


def _set(conn: Connection, p: Any, now: datetime, **values: Any) -> None:
    conn.execute(update(payouts).where(and_(payouts.c.id == p.id)).values(updated_at=now, **values))


def _event(p: Any, money: Money) -> dict[str, Any]:
    return {"payout_id": p.id, "party_id": p.party_id, "seller_id": p.seller_id, "amount": money.to_wire()}


def _announce(
    conn: Connection,
    p: Any,
    money: Money,
    action: str,
    now: datetime,
    *,
    reason: str | None = None,
    to: str | None = None,
) -> None:
    data = {**_event(p, money), "reason": reason, "credited_to": to}
    audit.record(conn, SYSTEM, action, p.id, now=now, reason=reason, data=data)
    events.emit(conn, action, data, now=now)
