"""Ordinary refunds before confirmation (DESIGN §2 flow 5).

The money leaves escrow for `in_transit:refunds` in the same transaction as the order's
update; the adapter delivers it to the buyer's original payment afterwards.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from escrow import audit, events
from escrow.audit import Actor
from escrow.domain.orders import Parts
from escrow.errors import ExceedsEscrowedAmount, IllegalTransition
from escrow.ids import new_id
from escrow.ledger import Ledger, transfer
from escrow.ledger.chart import IN_TRANSIT_REFUNDS, order_escrow
from escrow.money import Money
from escrow.service.orders import get_order, lock_order, parts_of, save_parts


def refund_order(
    conn: Connection, actor: Actor, now: datetime, order_id: str, amount: Money | None, reason: str
) -> dict[str, Any]:
    """Ordinary refund of unheld escrow before confirmation; the money leaves via in_transit:refunds.

    Raises NotFound, IllegalTransition (confirmed), ExceedsEscrowedAmount (held money is
    not refundable here: release the hold first, or use an advance refund).
    """
    o = lock_order(conn, order_id)
    if o.confirmed_at is not None:
        raise IllegalTransition(f"order {order_id} is confirmed; an ordinary refund is only possible before")
    if amount is not None and amount.currency != o.currency:
        raise IllegalTransition(f"order {order_id} is in {o.currency}, not {amount.currency}")
    value = o.escrowed if amount is None else amount.amount_minor
    if value == 0:
        raise ExceedsEscrowedAmount(f"order {order_id} has no unheld escrow to refund")
    if value > o.escrowed:
        raise ExceedsEscrowedAmount(
            f"refund of {value} exceeds the {o.escrowed} {o.currency} of unheld escrow on order {order_id}"
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
