"""Seller deposits (DESIGN §2 flow 10): money a seller lodges as security, confiscable later."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from escrow import audit
from escrow.audit import Actor
from escrow.ledger import Ledger, transfer
from escrow.money import Money


def deposit_account(seller_id: str) -> str:
    return f"seller:{seller_id}:deposit"


def record_deposit(
    conn: Connection, actor: Actor, now: datetime, *, seller_id: str, amount: Money, reference: str, reason: str | None
) -> dict[str, Any]:
    """Book a deposit received by bank transfer; returns the seller's new deposit balance."""
    ledger = Ledger(conn)
    account = deposit_account(seller_id)
    posted = ledger.post(
        transfer("seller_deposit", "clearing:bank", account, amount, memo=reference),
        now=now,
        request_id=actor.request_id,
    )
    audit.record(
        conn,
        actor,
        "seller.deposit_recorded",
        f"seller:{seller_id}",
        now=now,
        reason=reason,
        data={"amount": amount.to_wire(), "reference": reference, "entry_id": posted.id},
    )
    return {
        "seller_id": seller_id,
        "entry_id": posted.id,
        "amount": amount.to_wire(),
        "deposit": {"amount": ledger.balance(account, amount.currency), "currency": amount.currency},
        "created_at": now,
    }
