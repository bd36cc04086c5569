"""Seller balances, freeze and unfreeze (DESIGN §2 flow 4, §3 Seller).

A freeze moves what the seller has payable into frozen and routes future proceeds there.
An unfreeze releases what nothing ties down: frozen funds minus what live holds on
confirmed orders still hold (claims will tie funds down too once they exist).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from escrow import audit, events
from escrow.audit import Actor
from escrow.domain.orders import Parts
from escrow.errors import IllegalTransition
from escrow.ledger import Ledger, pieces, transfer
from escrow.ledger.chart import seller_account
from escrow.money import Money
from escrow.persistence.tables import holds, orders, sellers
from escrow.service.orders import _insert, parts_of, save_parts

SELLER_ACCOUNTS = ("payable", "frozen", "deposit", "owed")


def seller_view(conn: Connection, seller_id: str) -> dict[str, Any]:
    """Balances per currency from the ledger (payable, frozen, deposit, owed) and the orders."""
    per: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("escrowed", "held", *SELLER_ACCOUNTS), 0))
    for (account, currency), balance in (
        Ledger(conn).balances(seller_account(seller_id, k) for k in SELLER_ACCOUNTS).items()
    ):
        per[currency][account.rsplit(":", 1)[1]] = balance
    open_orders = conn.execute(
        select(orders.c.currency, func.sum(orders.c.escrowed), func.sum(orders.c.held))
        .where(orders.c.seller_id == seller_id, orders.c.confirmed_at.is_(None))
        .group_by(orders.c.currency)
    ).all()
    for currency, escrowed, held in open_orders:
        per[currency]["escrowed"] = int(escrowed or 0)
        per[currency]["held"] = int(held or 0)
    row = conn.execute(select(sellers).where(sellers.c.seller_id == seller_id)).one_or_none()
    return {
        "seller_id": seller_id,
        "frozen": bool(row.frozen) if row else False,
        "frozen_reason": row.frozen_reason if row else None,
        "frozen_at": row.frozen_at if row else None,
        "balances": [{"currency": c, **v} for c, v in sorted(per.items()) if any(v.values())],
    }


def _lock_seller(conn: Connection, seller_id: str, now: datetime) -> Any:
    conn.execute(
        _insert(conn, sellers)
        .values(seller_id=seller_id, frozen=False, created_at=now)
        .on_conflict_do_nothing(index_elements=["seller_id"])
    )
    return conn.execute(select(sellers).where(sellers.c.seller_id == seller_id).with_for_update()).one()


def freeze_seller(conn: Connection, actor: Actor, now: datetime, seller_id: str, reason: str) -> dict[str, Any]:
    """Freeze: payable moves to frozen (every currency), future proceeds go to frozen."""
    row = _lock_seller(conn, seller_id, now)
    if row.frozen:
        raise IllegalTransition(f"seller {seller_id} is already frozen")
    conn.execute(
        update(sellers).where(sellers.c.seller_id == seller_id).values(frozen=True, frozen_reason=reason, frozen_at=now)
    )
    ledger = Ledger(conn)
    payable, frozen = seller_account(seller_id, "payable"), seller_account(seller_id, "frozen")
    moved = [
        _move(ledger, actor, now, "seller_frozen", payable, frozen, currency, balance)
        for (_, currency), balance in sorted(ledger.balances([payable]).items())
        if balance > 0
    ]
    audit.record(conn, actor, "seller.frozen", f"seller:{seller_id}", now=now, reason=reason, data={"moved": moved})
    events.emit(conn, "seller.frozen", {"seller_id": seller_id, "moved": moved, "reason": reason}, now=now)
    return seller_view(conn, seller_id)


def unfreeze_seller(conn: Connection, actor: Actor, now: datetime, seller_id: str, reason: str) -> dict[str, Any]:
    """Unfreeze: release frozen funds that no live hold ties down; keep the rest frozen."""
    row = _lock_seller(conn, seller_id, now)
    if not row.frozen:
        raise IllegalTransition(f"seller {seller_id} is not frozen")
    conn.execute(
        update(sellers).where(sellers.c.seller_id == seller_id).values(frozen=False, frozen_reason=None, frozen_at=None)
    )
    # Confirmed orders with frozen money, locked in one order (by id) like every other path.
    confirmed = conn.execute(
        select(orders)
        .where(orders.c.seller_id == seller_id, orders.c.confirmed_at.is_not(None), orders.c.frozen > 0)
        .order_by(orders.c.order_id)
        .with_for_update()
    ).all()
    tied_by_order: dict[str, int] = defaultdict(int)
    for order_id, amount in conn.execute(
        select(holds.c.order_id, holds.c.amount).where(
            holds.c.seller_id == seller_id, holds.c.status.in_(("active", "contested")), holds.c.confirmed.is_(True)
        )
    ).all():
        tied_by_order[order_id] += amount
    tied: dict[str, int] = defaultdict(int)
    for o in confirmed:
        tied[o.currency] += tied_by_order[o.order_id]
        untied = o.frozen - tied_by_order[o.order_id]
        if untied > 0:
            p = parts_of(o)
            save_parts(conn, o, Parts(p.escrowed, p.held, p.frozen - untied, p.released + untied, p.refunded))
    ledger = Ledger(conn)
    frozen = seller_account(seller_id, "frozen")
    payable = seller_account(seller_id, "payable")
    released = [
        _move(ledger, actor, now, "seller_unfrozen", frozen, payable, currency, balance - tied[currency])
        for (_, currency), balance in sorted(ledger.balances([frozen]).items())
        if balance - tied[currency] > 0
    ]
    audit.record(
        conn, actor, "seller.unfrozen", f"seller:{seller_id}", now=now, reason=reason, data={"released": released}
    )
    events.emit(conn, "seller.unfrozen", {"seller_id": seller_id, "released": released}, now=now)
    return seller_view(conn, seller_id)


def _move(
    ledger: Ledger, actor: Actor, now: datetime, kind: str, source: str, destination: str, currency: str, total: int
) -> dict[str, Any]:
    """Move `total` of a seller's balance in one currency, an entry per piece (see `pieces`):
    refusing to freeze a balance beyond one amount's bound would make the biggest seller
    the one that cannot be stopped."""
    for piece in pieces(total):
        ledger.post(transfer(kind, source, destination, Money(piece, currency)), now=now, request_id=actor.request_id)
    return {"amount": total, "currency": currency}
