"""Seller deposits (DESIGN §2 flow 10): money a seller lodges as security, confiscable later.

    recorded      clearing:bank → seller:{id}:deposit
    confiscated   seller:{id}:deposit -C, platform:guarantee_fund +C, and for the part P that pays
                  what the seller owes (oldest advance refund first, escrow.domain.waterfall):
                  seller:{id}:owed +P, platform:recoverable_advances -P — one entry

Awarded civil claims do not exist yet: the rest of a confiscation replenishes the guarantee
fund. Both operations take the seller row exclusively first (the global lock order), and a
recorded deposit is offered to recovery at once when the jurisdiction's `recovery_order`
names `deposit`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from escrow import audit, events
from escrow.audit import Actor
from escrow.domain.waterfall import split_confiscation
from escrow.errors import Conflict
from escrow.ledger import Entry, Ledger, Posting, pieces, transfer
from escrow.ledger.chart import GUARANTEE_FUND, seller_account
from escrow.money import Money
from escrow.service.recovery import (
    RECOVERABLE_ADVANCES,
    lock_seller_exclusive,
    outstanding_of,
    record_step,
    recover_seller,
    set_recovered,
    unrecovered_on,
)
from escrow.settings import Policies


class ExceedsDeposit(Conflict):
    code = "exceeds_deposit"
    title = "More than the seller's deposit"


def deposit_account(seller_id: str) -> str:
    return seller_account(seller_id, "deposit")


def record_deposit(
    conn: Connection,
    actor: Actor,
    now: datetime,
    *,
    seller_id: str,
    amount: Money,
    reference: str,
    reason: str | None,
    policies: Policies | None = None,
) -> dict[str, Any]:
    """Book a deposit received by bank transfer; with `policies`, recover what the seller owes from it.

    Returns the seller's deposit balance after both.
    """
    lock_seller_exclusive(conn, seller_id, now)
    ledger = Ledger(conn)
    account = deposit_account(seller_id)
    posted = ledger.post(
        transfer("seller_deposit", "clearing:bank", account, amount, memo=reference),
        now=now,
        request_id=actor.request_id,
    )
    data = {"seller_id": seller_id, "amount": amount.to_wire(), "reference": reference, "entry_id": posted.id}
    audit.record(conn, actor, "seller.deposit_recorded", f"seller:{seller_id}", now=now, reason=reason, data=data)
    events.emit(conn, "seller.deposit_recorded", data, now=now)
    steps = recover_seller(conn, actor, now, seller_id, policies) if policies is not None else []
    return {
        "seller_id": seller_id,
        "entry_id": posted.id,
        "amount": amount.to_wire(),
        "deposit": {"amount": ledger.balance(account, amount.currency), "currency": amount.currency},
        "recovered": steps,
        "created_at": now,
    }


def confiscate_deposit(
    conn: Connection,
    actor: Actor,
    now: datetime,
    *,
    seller_id: str,
    amount: Money | None,
    reason: str,
    finding_ids: list[str],
) -> dict[str, Any]:
    """Confiscate `amount` of the deposit (all of it, in every currency, when None).

    Raises ExceedsDeposit when the deposit holds less than `amount`, or nothing at all.
    """
    lock_seller_exclusive(conn, seller_id, now)
    ledger = Ledger(conn)
    account = deposit_account(seller_id)
    held = {c: b for (_, c), b in ledger.balances([account]).items() if b > 0}
    if amount is not None:
        have = held.get(amount.currency, 0)
        if amount.amount_minor > have:
            raise ExceedsDeposit(
                f"confiscation of {amount.amount_minor} exceeds the {have} {amount.currency} deposit of {seller_id}"
            )
        targets = {amount.currency: amount.amount_minor}
    else:
        if not held:
            raise ExceedsDeposit(f"seller {seller_id} has no deposit to confiscate")
        targets = held
    results = []
    for currency, value in sorted(targets.items()):
        refunds = unrecovered_on(conn, seller_id, currency)
        split = split_confiscation(value, [outstanding_of(r) for r in refunds])
        paid = sum(split.to_receivables)
        # A deposit of several payments may exceed one posting's bound: each leg in pieces.
        legs = [Posting(account, Money(-p, currency)) for p in pieces(value)]
        legs += [Posting(GUARANTEE_FUND, Money(p, currency)) for p in pieces(value)]
        if paid:
            legs += [Posting(seller_account(seller_id, "owed"), Money(p, currency)) for p in pieces(paid)]
            legs += [Posting(RECOVERABLE_ADVANCES, Money(-p, currency)) for p in pieces(paid)]
        posted = ledger.post(
            Entry("deposit_confiscated", tuple(legs), memo=reason[:2000]), now=now, request_id=actor.request_id
        )
        steps = []
        for r, part in zip(refunds, split.to_receivables, strict=True):
            if part:
                left = outstanding_of(r) - part
                steps.append({"refund_id": r.id, **record_step(
                    conn, actor, now, r, source="confiscation", amount=part, account=account, order_id=None,
                    entry_id=posted.id, outstanding=left,
                )})  # fmt: skip
                set_recovered(conn, r, int(r.recovered) + part, now)
        results.append(
            {
                "amount": {"amount": value, "currency": currency},
                "to_recovery": {"amount": paid, "currency": currency},
                "to_guarantee_fund": {"amount": split.to_guarantee_fund, "currency": currency},
                "entry_id": posted.id,
                "recoveries": steps,
                "deposit_left": {"amount": ledger.balance(account, currency), "currency": currency},
            }
        )
    data = {"seller_id": seller_id, "finding_ids": finding_ids, "confiscated": results}
    audit.record(conn, actor, "seller.deposit_confiscated", f"seller:{seller_id}", now=now, reason=reason, data=data)
    events.emit(conn, "seller.deposit_confiscated", {**data, "reason": reason}, now=now)
    return {"seller_id": seller_id, "reason": reason, "finding_ids": finding_ids, "confiscated": results,
            "created_at": now}  # fmt: skip
