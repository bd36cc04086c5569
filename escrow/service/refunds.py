"""Ordinary refunds before confirmation (DESIGN §2 flow 5), delivered through the outbox.

The money leaves escrow for `in_transit:refunds` in the same transaction as the order's
update, the refund row and its outbox instruction; the worker delivers it afterwards:

    card orders           a card refund to the original payment (key: the refund id)
    bank_transfer orders  a credit transfer (EndToEndId: the refund id) to the payout account
                          registered for the buyer's party id (`PUT /v1/parties/{buyer_id}/
                          payout-account`); until one exists the instruction waits in the
                          outbox with `last_error` saying so, and is sent once it does

Outcomes: succeeded/booked → `in_transit:refunds` to `clearing:{method}`; failed/rejected →
back to `order:{id}:escrow` (the buyer's money stays in escrow, refundable again); a bank
return after booking → `clearing:bank` back to the order's escrow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from escrow import audit, events, outbox
from escrow.audit import SYSTEM, Actor
from escrow.domain.orders import Parts
from escrow.errors import ExceedsEscrowedAmount, IllegalTransition, InvalidInput, NotFound
from escrow.ids import new_id
from escrow.ledger import Ledger, transfer
from escrow.ledger.chart import IN_TRANSIT_REFUNDS, clearing, order_escrow, seller_account
from escrow.money import Money
from escrow.outbox import Outcome
from escrow.persistence.tables import order_refunds, orders
from escrow.service.advance_refunds import ExceedsRefundableAmount, refundable_amount
from escrow.service.orders import get_order, lock_order, parts_of, save_parts, seller_is_frozen


def refund_order(
    conn: Connection, actor: Actor, now: datetime, order_id: str, amount: Money | None, reason: str
) -> dict[str, Any]:
    """Ordinary refund of unheld escrow before confirmation; the money leaves via in_transit:refunds.

    Raises NotFound, InvalidInput (another currency), IllegalTransition (confirmed),
    ExceedsEscrowedAmount (held money is not refundable here: release the hold first, or use
    an advance refund).
    """
    o = lock_order(conn, order_id)
    if o.confirmed_at is not None:
        raise IllegalTransition(f"order {order_id} is confirmed; an ordinary refund is only possible before")
    if amount is not None and amount.currency != o.currency:
        raise InvalidInput(f"order {order_id} is in {o.currency}, not {amount.currency}", field="amount.currency")
    value = o.escrowed if amount is None else amount.amount_minor
    if value == 0:
        raise ExceedsEscrowedAmount(f"order {order_id} has no unheld escrow to refund")
    if value > o.escrowed:
        raise ExceedsEscrowedAmount(
            f"refund of {value} exceeds the {o.escrowed} {o.currency} of unheld escrow on order {order_id}"
        )
    # Advance refunds (pending approval included) count against what the buyer paid too.
    refundable = refundable_amount(conn, o)
    if value > refundable:
        raise ExceedsRefundableAmount(
            f"refund of {value} exceeds the {refundable} {o.currency} still refundable on order {order_id} "
            "after advance refunds"
        )
    money = Money(value, o.currency)
    refund_id = new_id("ref")
    Ledger(conn).post(
        transfer("order_refunded", order_escrow(order_id), IN_TRANSIT_REFUNDS, money, memo=refund_id),
        now=now,
        request_id=actor.request_id,
    )
    p = parts_of(o)
    save_parts(conn, o, Parts(p.escrowed - value, p.held, p.frozen, p.released, p.refunded + value))
    conn.execute(
        order_refunds.insert(),
        {
            "id": refund_id,
            "order_id": order_id,
            "currency": o.currency,
            "amount": value,
            "method": o.payment_method,
            "status": "submitted",
            "booked": False,
            "failure_reason": None,
            "created_at": now,
            "updated_at": now,
        },
    )
    card = o.payment_method == "card"
    outbox.enqueue(
        conn,
        rail="card" if card else "bank",
        kind="refund",
        key=refund_id,
        object_id=refund_id,
        amount=money,
        destination={"payment_reference": o.payment_reference} if card else {"party_id": o.buyer_id},
        now=now,
    )
    audit.record(
        conn,
        actor,
        "order.refunded",
        order_id,
        now=now,
        reason=reason,
        data={"refund_id": refund_id, "amount": money.to_wire()},
    )
    events.emit(
        conn,
        "order.refunded",
        {"order_id": order_id, "refund_id": refund_id, "amount": money.to_wire(), "method": o.payment_method},
        now=now,
    )
    view = get_order(conn, order_id)
    view["refund"] = {"id": refund_id, "amount": money.to_wire(), "status": "submitted"}
    return view


def lock_refund(conn: Connection, refund_id: str, now: datetime) -> tuple[Any, Any, bool]:
    """(order row, refund row, seller frozen?) locked in the global order: seller (shared), order, refund."""
    order_id = conn.execute(
        select(order_refunds.c.order_id).where(order_refunds.c.id == refund_id)
    ).scalar_one_or_none()
    if order_id is None:
        raise NotFound(f"refund {refund_id} not found")
    seller_id = conn.execute(select(orders.c.seller_id).where(orders.c.order_id == order_id)).scalar_one()
    frozen = seller_is_frozen(conn, seller_id, now)
    o = lock_order(conn, order_id)
    r = conn.execute(select(order_refunds).where(order_refunds.c.id == refund_id).with_for_update()).one()
    return o, r, frozen


def apply_outcome(
    conn: Connection, o: Any, r: Any, outcome: Outcome, now: datetime, *, seller_frozen: bool = False
) -> bool:
    """Apply a rail outcome to the locked refund `r` of order `o`; False when it changes nothing."""
    if r.status in ("failed", "returned"):
        return False
    money = Money(int(r.amount), r.currency)
    ledger = Ledger(conn)
    rail_clearing = clearing(r.method)
    kind = outcome.kind
    if kind == "accepted":
        return False
    if kind in ("failed", "rejected"):
        if r.status == "succeeded":
            return False  # a late decline after a success (or a booking) changes nothing
        _give_back(conn, ledger, o, money, IN_TRANSIT_REFUNDS, "order_refund_failed", now, seller_frozen)
        _set(conn, r, now, status="failed", failure_reason=outcome.reason or kind)
        _announce(conn, o, r, money, "refund.failed", now, outcome.reason)
        return True
    changed = False
    if r.status == "submitted" and kind in ("succeeded", "booked", "returned"):
        ledger.post(transfer("order_refund_succeeded", IN_TRANSIT_REFUNDS, rail_clearing, money), now=now)
        _set(conn, r, now, status="succeeded", booked=True)
        _announce(conn, o, r, money, "refund.succeeded", now, None)
        changed = True
    if kind == "returned":
        _give_back(conn, ledger, o, money, rail_clearing, "order_refund_returned", now, seller_frozen)
        _set(conn, r, now, status="returned", failure_reason=outcome.reason or "returned")
        _announce(conn, o, r, money, "refund.returned", now, outcome.reason)
        changed = True
    return changed


def _give_back(
    conn: Connection, ledger: Ledger, o: Any, money: Money, source: str, kind: str, now: datetime, seller_frozen: bool
) -> None:
    """Money of a failed or returned refund goes back into escrow, or, if the buyer confirmed
    receipt meanwhile, where the confirmation sent the rest of the order: payable (frozen
    while the seller is frozen). Escrow of a confirmed order could never move again."""
    fresh = lock_order(conn, o.order_id)
    p = parts_of(fresh)
    value = money.amount_minor
    if fresh.confirmed_at is None:
        ledger.post(transfer(kind, source, order_escrow(o.order_id), money), now=now)
        save_parts(conn, fresh, Parts(p.escrowed + value, p.held, p.frozen, p.released, p.refunded - value))
    elif seller_frozen:
        ledger.post(transfer(kind, source, seller_account(o.seller_id, "frozen"), money), now=now)
        save_parts(conn, fresh, Parts(p.escrowed, p.held, p.frozen + value, p.released, p.refunded - value))
    else:
        ledger.post(transfer(kind, source, seller_account(o.seller_id, "payable"), money), now=now)
        save_parts(conn, fresh, Parts(p.escrowed, p.held, p.frozen, p.released + value, p.refunded - value))


def _set(conn: Connection, r: Any, now: datetime, **values: Any) -> None:
    conn.execute(update(order_refunds).where(order_refunds.c.id == r.id).values(updated_at=now, **values))


def _announce(conn: Connection, o: Any, r: Any, money: Money, action: str, now: datetime, reason: str | None) -> None:
    data = {"refund_id": r.id, "order_id": o.order_id, "kind": "ordinary", "amount": money.to_wire(), "reason": reason}
    audit.record(conn, SYSTEM, action, r.id, now=now, reason=reason, data=data)
    events.emit(conn, action, data, now=now)
