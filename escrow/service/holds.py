"""Holds: place, release (partly or fully), extend, contest, and expire at deadlines.

Locks are always taken order row first, then the hold row, so two operations on one
order can never deadlock and always see each other's result.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, or_, select, update

from escrow import audit, events
from escrow.audit import SYSTEM, Actor
from escrow.domain.orders import Parts, check_extension, check_hold_deadline, default_hold_deadline, hold_cap
from escrow.errors import ExceedsEscrowedAmount, ExceedsHeldAmount, IllegalTransition, InvalidInput, NotFound
from escrow.ledger import Ledger, transfer
from escrow.ledger.chart import order_escrow, order_held, seller_account
from escrow.limits import EXPIRE_BATCH_MAX
from escrow.money import Money
from escrow.persistence.db import Each, transaction
from escrow.persistence.tables import holds
from escrow.service.orders import hold_view, lock_order, parts_of, place_hold_locked, save_parts, seller_is_frozen
from escrow.settings import Policies

LIVE = ("active", "contested")

# Built once (see the note on the order statements in `escrow.service.orders`).
_HOLD = select(holds).where(holds.c.id == bindparam("b_id"))
_LOCK_HOLD = _HOLD.with_for_update()
_HOLD_PARTIES = select(holds.c.order_id, holds.c.seller_id).where(holds.c.id == bindparam("b_id"))
_UPDATE_HOLD = update(holds).where(holds.c.id == bindparam("b_id"))  # SET from the parameters


def get_hold(conn: Connection, hold_id: str) -> dict[str, Any]:
    row = conn.execute(_HOLD, {"b_id": hold_id}).one_or_none()
    if row is None:
        raise NotFound(f"hold {hold_id} not found")
    return hold_view(row)


def list_holds(
    conn: Connection,
    *,
    status: str | None,
    seller_id: str | None,
    order_id: str | None,
    starting_after: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], bool]:
    query = select(holds)
    if status:
        query = query.where(holds.c.status == status)
    if seller_id:
        query = query.where(holds.c.seller_id == seller_id)
    if order_id:
        query = query.where(holds.c.order_id == order_id)
    if starting_after:
        query = query.where(holds.c.id > starting_after)
    rows = conn.execute(query.order_by(holds.c.id).limit(limit + 1)).all()
    return [hold_view(r) for r in rows[:limit]], len(rows) > limit


def _lock_hold(conn: Connection, hold_id: str, now: datetime) -> tuple[Any, Any, bool]:
    """(order, hold, seller frozen?), locked seller (shared), order, hold: the global order."""
    ids = conn.execute(_HOLD_PARTIES, {"b_id": hold_id}).one_or_none()
    if ids is None:
        raise NotFound(f"hold {hold_id} not found")
    frozen_seller = seller_is_frozen(conn, ids.seller_id, now)
    o = lock_order(conn, ids.order_id)
    h = conn.execute(_LOCK_HOLD, {"b_id": hold_id}).one()
    return o, h, frozen_seller


def place_hold(
    conn: Connection,
    actor: Actor,
    now: datetime,
    policies: Policies,
    *,
    order_id: str,
    amount: Money | None,
    reason: str,
    finding_ids: list[str],
    expires_at: datetime | None,
) -> dict[str, Any]:
    """Hold all or part of an order's escrow. Raises NotFound, IllegalTransition,
    ExceedsEscrowedAmount, BeyondHoldMaximum."""
    o = lock_order(conn, order_id)
    if amount is not None and amount.currency != o.currency:
        raise InvalidInput(f"order {order_id} is in {o.currency}, not {amount.currency}", field="amount.currency")
    policy = policies.for_jurisdiction(o.jurisdiction)
    deadline = (
        check_hold_deadline(expires_at, now=now, policy=policy)
        if expires_at is not None
        else default_hold_deadline(now, policy, review=False)
    )
    value = o.escrowed if amount is None else amount.amount_minor
    if value == 0 and o.confirmed_at is None:
        raise ExceedsEscrowedAmount(f"order {order_id} has nothing left in escrow to hold")
    row = place_hold_locked(
        conn, actor, now, o, amount=value, reason=reason, finding_ids=finding_ids, expires_at=deadline,
        cap=hold_cap(now, policy),
    )  # fmt: skip
    return get_hold(conn, str(row["id"]))


def release_locked(
    conn: Connection,
    actor: Actor,
    now: datetime,
    o: Any,
    h: Any,
    *,
    amount: int,
    reason: str,
    final: str,
    seller_frozen: bool,
) -> SimpleNamespace:
    """Give `amount` of the locked hold `h` back: to escrow before confirmation, else to the seller.

    After confirmation the money moves from seller:frozen to seller:payable, unless the
    seller is frozen, in which case it stays frozen (no longer tied to this hold). Returns
    the hold row as written (it stays locked, so that is what a read would return).
    """
    money = Money(amount, h.currency)
    p = parts_of(o)
    ledger = Ledger(conn)
    if not h.confirmed:
        ledger.post(
            transfer("hold_released", order_held(o.order_id), order_escrow(o.order_id), money),
            now=now,
            request_id=actor.request_id,
        )
        save_parts(conn, o, Parts(p.escrowed + amount, p.held - amount, p.frozen, p.released, p.refunded))
        destination = "escrow"
    elif seller_frozen:
        destination = "frozen"
    else:
        ledger.post(
            transfer(
                "hold_released",
                seller_account(o.seller_id, "frozen"),
                seller_account(o.seller_id, "payable"),
                money,
                memo=h.id,
            ),
            now=now,
            request_id=actor.request_id,
        )
        save_parts(conn, o, Parts(p.escrowed, p.held, p.frozen - amount, p.released + amount, p.refunded))
        destination = "payable"
    left = h.amount - amount
    changed = {"amount": left, "status": h.status if left else final, "updated_at": now}
    conn.execute(_UPDATE_HOLD, {"b_id": h.id, **changed})
    kind = "hold.expired" if final == "expired" and not left else "hold.released"
    audit.record(
        conn, actor, kind, h.id, now=now, reason=reason,
        data={"order_id": o.order_id, "amount": money.to_wire(), "to": destination, "left": left},
    )  # fmt: skip
    events.emit(
        conn,
        kind,
        {
            "hold_id": h.id,
            "order_id": o.order_id,
            "seller_id": o.seller_id,
            "amount": money.to_wire(),
            "remaining": {"amount": left, "currency": h.currency},
            "to": destination,
        },
        now=now,
    )
    return SimpleNamespace(**{**h._mapping, **changed})


def release_hold(
    conn: Connection, actor: Actor, now: datetime, hold_id: str, amount: Money | None, reason: str
) -> dict[str, Any]:
    """Release part or all of a hold. Raises NotFound, IllegalTransition, ExceedsHeldAmount."""
    o, h, frozen_seller = _lock_hold(conn, hold_id, now)
    if h.status not in LIVE:
        raise IllegalTransition(f"hold {hold_id} is {h.status}; only active or contested holds can be released")
    if amount is not None and amount.currency != h.currency:
        raise InvalidInput(f"hold {hold_id} is in {h.currency}, not {amount.currency}", field="amount.currency")
    value = h.amount if amount is None else amount.amount_minor
    if value > h.amount:
        raise ExceedsHeldAmount(f"release of {value} exceeds the {h.amount} {h.currency} the hold ties down")
    written = release_locked(
        conn, actor, now, o, h, amount=value, reason=reason, final="released", seller_frozen=frozen_seller
    )
    return hold_view(written)


def extend_hold(
    conn: Connection, actor: Actor, now: datetime, policies: Policies, hold_id: str, expires_at: datetime, reason: str
) -> dict[str, Any]:
    """Move a live hold's deadline later, within the jurisdiction's cap on extensions."""
    _, h, _ = _lock_hold(conn, hold_id, now)
    if h.status not in LIVE:
        raise IllegalTransition(f"hold {hold_id} is {h.status}; only active or contested holds can be extended")
    deadline = check_extension(expires_at, current=h.expires_at, cap=h.max_expires_at, now=now)
    conn.execute(update(holds).where(holds.c.id == hold_id).values(expires_at=deadline, updated_at=now))
    audit.record(
        conn, actor, "hold.extended", hold_id, now=now, reason=reason,
        data={"from": h.expires_at.isoformat(), "to": deadline.isoformat()},
    )  # fmt: skip
    events.emit(conn, "hold.extended", {"hold_id": hold_id, "order_id": h.order_id, "expires_at": deadline}, now=now)
    return get_hold(conn, hold_id)


def contest_hold(
    conn: Connection, actor: Actor, now: datetime, policies: Policies, hold_id: str, statement: str
) -> dict[str, Any]:
    """Record the seller's counter-notice; the claim window of the jurisdiction starts now."""
    o, h, _ = _lock_hold(conn, hold_id, now)
    if h.status != "active":
        raise IllegalTransition(f"hold {hold_id} is {h.status}; only an active hold can be contested")
    window_ends = now + timedelta(days=policies.for_jurisdiction(o.jurisdiction).claim_window_days)
    conn.execute(
        update(holds)
        .where(holds.c.id == hold_id)
        .values(status="contested", claim_window_ends_at=window_ends, counter_notice=statement, updated_at=now)
    )
    audit.record(
        conn,
        actor,
        "hold.contested",
        hold_id,
        now=now,
        reason=statement,
        data={"claim_window_ends_at": window_ends.isoformat()},
    )
    events.emit(
        conn,
        "hold.contested",
        {"hold_id": hold_id, "order_id": h.order_id, "seller_id": h.seller_id, "claim_window_ends_at": window_ends},
        now=now,
    )
    return get_hold(conn, hold_id)


def _due(h: Any, now: datetime) -> str | None:
    """Why a live hold must end now, or None: its deadline, or an unanswered counter-notice."""
    if h.status not in LIVE:
        return None
    if h.expires_at <= now:
        return "expired"
    if h.status == "contested" and h.claim_window_ends_at is not None and h.claim_window_ends_at <= now:
        return "claim_window_lapsed"
    return None


def expire_due(engine: Engine, now: datetime, *, batch: int = EXPIRE_BATCH_MAX) -> int:
    """Release every hold past its deadline or claim window, each once; returns how many ended.

    Each hold ends in its own transaction and re-checks, under the order lock, that it is
    still live and due, so several workers (or a worker racing a manual release) end a
    hold at most once.
    """
    with engine.connect() as conn:
        candidates: list[str] = list(
            conn.execute(
                select(holds.c.id)
                .where(
                    holds.c.status.in_(LIVE),
                    or_(
                        holds.c.expires_at <= now,
                        (holds.c.status == "contested") & (holds.c.claim_window_ends_at <= now),
                    ),
                )
                .order_by(holds.c.expires_at)
                .limit(batch)
            )
            .scalars()
            .all()
        )
    ended = 0
    each = Each("expire_holds")
    for hold_id in candidates:

        def end(conn: Connection, hold_id: str = hold_id) -> bool:
            o, h, frozen_seller = _lock_hold(conn, hold_id, now)
            why = _due(h, now)
            if why is None:
                return False
            final = "expired" if why == "expired" else "released"
            reason = "deadline reached" if why == "expired" else "claim window ended without a claim"
            release_locked(
                conn, SYSTEM, now, o, h, amount=h.amount, reason=reason, final=final, seller_frozen=frozen_seller
            )
            return True

        def end_alone(end: Callable[[Connection], bool] = end) -> bool:
            return transaction(engine, end)

        # One hold that cannot end must not keep the others past their deadlines.
        ended += int(each.run(hold_id, end_alone) or False)
    each.done()
    return ended
