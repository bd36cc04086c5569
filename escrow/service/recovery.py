"""Recovery of advance refunds from the seller (DESIGN §2 flow 7 and the waterfall).

The chart of the refund-first flows (positive credits an account, see escrow.ledger):

    submitted     platform:guarantee_fund -A, in_transit:refunds +A,
                  seller:{id}:owed -A, platform:recoverable_advances +A
    recovered x   <source> -x, seller:{id}:owed +x, platform:recoverable_advances -x,
                  platform:guarantee_fund +x
    written off w seller:{id}:owed +w, platform:recoverable_advances -w
    confiscated C seller:{id}:deposit -C, owed +P, recoverable_advances -P, guarantee_fund +C
                  (P: the part that pays receivables, oldest first)

`seller:{id}:owed` is the receivable (unguarded, negative while the seller owes);
`platform:recoverable_advances` is its guarded counterpart (equal to minus the sum of every
seller's `owed`), so the guarantee fund goes down by exactly what has been advanced and not
yet recovered, and a write-off is a loss to the fund that the books show.

Sources, in the jurisdiction's `recovery_order`:

    order_held   the refunded order's own money: before confirmation its held funds, then its
                 unheld escrow (the buyer's payment, which the buyer has had back from the fund);
                 after confirmation the part of `seller:frozen` that live holds on it tie down.
                 The order's parts move from held/escrowed/frozen to `refunded`, and its holds
                 shrink (status `applied` at zero) — the buyer's refund now comes from the order.
    frozen       `seller:frozen` minus what live holds tie down (those belong to other orders'
                 buyers and claims first: the waterfall's step 1)
    payable      `seller:payable`
    deposit      `seller:deposit`

Locks, in the global order: the seller row exclusively (recovery reads seller-wide balances,
so a release, confirmation or payout of the seller must not interleave), then order rows (by
id), then advance refund rows, then hold rows, then balance rows. Every amount is re-read
under those locks, so concurrent recoveries and releases never take a minor unit twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, and_, exists, func, literal, or_, select, update

from escrow import audit, events
from escrow.audit import SYSTEM, Actor
from escrow.domain.orders import Parts
from escrow.domain.waterfall import plan_recovery
from escrow.errors import IllegalTransition, InsufficientFunds, InvalidInput
from escrow.ids import new_id
from escrow.ledger import Entry, Ledger, Posting
from escrow.ledger.chart import GUARANTEE_FUND, order_escrow, order_held, seller_account
from escrow.limits import EXPIRE_BATCH_MAX
from escrow.money import Money
from escrow.persistence.db import transaction
from escrow.persistence.tables import advance_recoveries, advance_refunds, holds, ledger_balances, orders
from escrow.service.orders import parts_of, save_parts
from escrow.service.sellers import _lock_seller
from escrow.settings import Policies

log = structlog.get_logger(__name__)

RECOVERABLE_ADVANCES = "platform:recoverable_advances"
LIVE = ("active", "contested")
RECOVER_SELLERS_BATCH_MAX = EXPIRE_BATCH_MAX  # sellers visited per worker round


def lock_seller_exclusive(conn: Connection, seller_id: str, now: datetime) -> Any:
    """The seller row, created on first use and locked exclusively (first in the global order)."""
    return _lock_seller(conn, seller_id, now)


def outstanding_of(r: Any) -> int:
    return int(r.amount) - int(r.recovered) - int(r.written_off)


# --- reading ----------------------------------------------------------------------------------


def recoveries_of(conn: Connection, refund_id: str, attempt: int) -> list[Any]:
    return list(
        conn.execute(
            select(advance_recoveries)
            .where(
                advance_recoveries.c.refund_id == refund_id,
                advance_recoveries.c.attempt == attempt,
                advance_recoveries.c.undone.is_(False),
            )
            .order_by(advance_recoveries.c.position)
        ).all()
    )


def recovered_into_refunded(conn: Connection, order_id: str) -> int:
    """What recoveries moved into the order's `refunded` part (still standing)."""
    total = conn.execute(
        select(func.coalesce(func.sum(advance_recoveries.c.amount), 0)).where(
            advance_recoveries.c.order_id == order_id,
            advance_recoveries.c.source == "order_held",
            advance_recoveries.c.undone.is_(False),
        )
    ).scalar_one()
    return int(total)


def _tied(conn: Connection, seller_id: str, currency: str, order_id: str | None = None) -> int:
    """What live holds on confirmed orders tie down in `seller:frozen`."""
    query = select(func.coalesce(func.sum(holds.c.amount), 0)).where(
        holds.c.seller_id == seller_id,
        holds.c.currency == currency,
        holds.c.status.in_(LIVE),
        holds.c.confirmed.is_(True),
    )
    if order_id is not None:
        query = query.where(holds.c.order_id == order_id)
    return int(conn.execute(query).scalar_one())


# --- the steps --------------------------------------------------------------------------------


def _recovery_entry(source_account: str, seller_id: str, money: Money, refund_id: str) -> Entry:
    return Entry(
        "advance_refund_recovered",
        (
            Posting(source_account, -money),
            Posting(seller_account(seller_id, "owed"), money),
            Posting(RECOVERABLE_ADVANCES, -money),
            Posting(GUARANTEE_FUND, money),
        ),
        memo=refund_id,
    )


def _shrink_holds(conn: Connection, actor: Actor, now: datetime, o: Any, amount: int, refund_id: str) -> None:
    """Apply `amount` of the order's live holds (oldest first) to the buyer's refund."""
    rows = conn.execute(
        select(holds)
        .where(holds.c.order_id == o.order_id, holds.c.status.in_(LIVE))
        .order_by(holds.c.created_at, holds.c.id)
        .with_for_update()
    ).all()
    left = amount
    for h in rows:
        if left == 0:
            break
        take = min(left, int(h.amount))
        rest = int(h.amount) - take
        left -= take
        conn.execute(
            update(holds)
            .where(holds.c.id == h.id)
            .values(amount=rest, status=h.status if rest else "applied", updated_at=now)
        )
        data = {"order_id": o.order_id, "refund_id": refund_id, "amount": {"amount": take, "currency": h.currency},
                "left": rest}  # fmt: skip
        audit.record(conn, actor, "hold.applied", h.id, now=now, reason="advance refund recovered", data=data)
        events.emit(conn, "hold.applied", {"hold_id": h.id, "seller_id": o.seller_id, **data}, now=now)
    if left:  # pragma: no cover  # the caller never takes more than the holds tie down
        raise IllegalTransition(f"order {o.order_id}: holds tie down {amount - left}, not {amount}")


def _order(conn: Connection, order_id: str) -> Any:
    return conn.execute(select(orders).where(orders.c.order_id == order_id)).one()


Step = tuple[str, int, str, str | None, str]  # source, amount, account, order id, entry id


def _take(conn: Connection, actor: Actor, now: datetime, r: Any, source: str, amount: int) -> list[Step]:
    """Move `amount` from `source` to the receivable of `r`: one ledger entry per account debited."""
    ledger = Ledger(conn)

    def post(account: str, value: int) -> str:
        entry = _recovery_entry(account, r.seller_id, Money(value, r.currency), r.id)
        return ledger.post(entry, now=now, request_id=actor.request_id).id

    if source != "order_held":
        account = seller_account(r.seller_id, source)
        return [(source, amount, account, None, post(account, amount))]
    o = _order(conn, r.order_id)
    p = parts_of(o)
    steps: list[Step] = []
    if o.confirmed_at is not None:
        frozen = seller_account(r.seller_id, "frozen")
        steps.append((source, amount, frozen, o.order_id, post(frozen, amount)))
        _shrink_holds(conn, actor, now, o, amount, r.id)
        save_parts(conn, o, Parts(p.escrowed, p.held, p.frozen - amount, p.released, p.refunded + amount))
        return steps
    from_held = min(amount, p.held)
    from_escrow = amount - from_held
    if from_held:
        steps.append((source, from_held, order_held(o.order_id), o.order_id, post(order_held(o.order_id), from_held)))
        _shrink_holds(conn, actor, now, o, from_held, r.id)
    if from_escrow:
        escrow = order_escrow(o.order_id)
        steps.append((source, from_escrow, escrow, o.order_id, post(escrow, from_escrow)))
    save_parts(conn, o, Parts(p.escrowed - from_escrow, p.held - from_held, p.frozen, p.released, p.refunded + amount))
    return steps


def _available(conn: Connection, r: Any, source: str) -> int:
    ledger = Ledger(conn)
    if source == "order_held":
        o = _order(conn, r.order_id)
        if o.confirmed_at is None:
            return int(o.held) + int(o.escrowed)
        tied = _tied(conn, r.seller_id, r.currency, o.order_id)
        return min(tied, int(o.frozen), ledger.balance(seller_account(r.seller_id, "frozen"), r.currency))
    balance = ledger.balance(seller_account(r.seller_id, source), r.currency)
    if source == "frozen":
        return balance - _tied(conn, r.seller_id, r.currency)
    return balance


def record_step(
    conn: Connection, actor: Actor, now: datetime, r: Any, *, source: str, amount: int, account: str,
    order_id: str | None, entry_id: str, outstanding: int,
) -> dict[str, Any]:  # fmt: skip
    """The recovery row, audit record and event of one step (the ledger entry is already posted)."""
    money = Money(amount, r.currency)
    position = conn.execute(
        select(func.coalesce(func.max(advance_recoveries.c.position), 0)).where(advance_recoveries.c.refund_id == r.id)
    ).scalar_one()
    row = {
        "id": new_id("rcv"),
        "refund_id": r.id,
        "position": int(position) + 1,  # the refund row is locked: no other step of it is being written
        "attempt": r.attempt,
        "seller_id": r.seller_id,
        "order_id": order_id,
        "source": source,
        "source_account": account,
        "currency": r.currency,
        "amount": amount,
        "entry_id": entry_id,
        "undone": False,
        "created_at": now,
    }
    conn.execute(advance_recoveries.insert(), row)
    data = {"refund_id": r.id, "seller_id": r.seller_id, "order_id": r.order_id, "source": source,
            "account": account, "amount": money.to_wire(),
            "outstanding": {"amount": outstanding, "currency": r.currency}}  # fmt: skip
    audit.record(conn, actor, "refund.recovery_applied", r.id, now=now, data=data)
    events.emit(conn, "recovery.applied", data, now=now)
    return {"source": source, "amount": money.to_wire(), "order_id": order_id, "recovery_id": row["id"]}


def set_recovered(conn: Connection, r: Any, recovered: int, now: datetime) -> None:
    done = int(r.amount) - recovered - int(r.written_off) == 0
    status = ("recovered" if int(r.written_off) == 0 else "written_off") if done else "outstanding"
    conn.execute(
        update(advance_refunds)
        .where(advance_refunds.c.id == r.id)
        .values(recovered=recovered, recovery_status=status, updated_at=now)
    )
    if done:
        data = {"refund_id": r.id, "seller_id": r.seller_id, "status": status,
                "recovered": {"amount": recovered, "currency": r.currency},
                "written_off": {"amount": int(r.written_off), "currency": r.currency}}  # fmt: skip
        audit.record(conn, SYSTEM, "refund.recovery_completed", r.id, now=now, data=data)
        events.emit(conn, "recovery.completed", data, now=now)


def _recover_one(conn: Connection, actor: Actor, now: datetime, r: Any, policies: Policies) -> list[dict[str, Any]]:
    outstanding = outstanding_of(r)
    if outstanding <= 0:
        return []
    # Availability is read once, up front: taking from `order_held` after confirmation lowers
    # seller:frozen and what holds tie down by the same amount, so `frozen` is unchanged by it.
    sources = policies.for_jurisdiction(r.jurisdiction).recovery_order
    plan = plan_recovery(outstanding, [(source, _available(conn, r, source)) for source in sources])
    taken: list[dict[str, Any]] = []
    recovered = int(r.recovered)
    for take in plan:
        for source, amount, account, order_id, entry_id in _take(conn, actor, now, r, take.source, take.amount):
            outstanding -= amount
            recovered += amount
            taken.append(record_step(conn, actor, now, r, source=source, amount=amount, account=account,
                                     order_id=order_id, entry_id=entry_id, outstanding=outstanding))  # fmt: skip
    if taken:
        set_recovered(conn, r, recovered, now)
    return taken


def recover_seller(
    conn: Connection, actor: Actor, now: datetime, seller_id: str, policies: Policies
) -> list[dict[str, Any]]:
    """Pay off what `seller_id` owes from whatever money of theirs is available, oldest receivable first.

    Runs in the caller's transaction and takes the seller lock first: call it before touching
    any order, hold or balance of the seller. Returns the steps taken (possibly none).
    """
    lock_seller_exclusive(conn, seller_id, now)
    pending = conn.execute(
        select(advance_refunds.c.id, advance_refunds.c.order_id).where(
            advance_refunds.c.seller_id == seller_id, advance_refunds.c.recovery_status == "outstanding"
        )
    ).all()
    if not pending:
        return []
    order_ids = sorted({p.order_id for p in pending})
    conn.execute(select(orders.c.order_id).where(orders.c.order_id.in_(order_ids)).order_by(orders.c.order_id)
                 .with_for_update()).all()  # fmt: skip
    rows = conn.execute(
        select(advance_refunds)
        .where(advance_refunds.c.id.in_([p.id for p in pending]))
        .order_by(advance_refunds.c.id)
        .with_for_update()
    ).all()
    steps: list[dict[str, Any]] = []
    for r in sorted(rows, key=lambda row: (row.created_at, row.id)):
        if r.recovery_status == "outstanding":
            steps += [{"refund_id": r.id, **s} for s in _recover_one(conn, actor, now, r, policies)]
    return steps


@dataclass(slots=True)
class Rotation:
    """Where the last round of `recover_outstanding` stopped, in seller id order.

    Each round goes on from there and wraps around: sellers whose money holds tie down are
    visited and take nothing, and a round that always began at the first id would, once a
    batch of them existed, never reach the sellers after them (nor pay those out: the sweep
    skips a seller who owes). Kept by the worker process; a restart begins at the first id.
    """

    after: str = ""


def recover_outstanding(
    engine: Engine,
    now: datetime,
    policies: Policies,
    *,
    batch: int = RECOVER_SELLERS_BATCH_MAX,
    rotation: Rotation | None = None,
) -> int:
    """One worker round: recover for every seller with an outstanding receivable; returns the steps taken.

    Only sellers with a positive payable, frozen or deposit balance, or money left on a refunded
    order, are visited (frozen money that holds tie down still counts: such a seller is looked
    at and takes nothing). Each seller in its own transaction (retried on deadlock); a seller
    whose money moved away meanwhile (InsufficientFunds) is simply visited again next round.
    """
    owner = advance_refunds.c.seller_id
    seller_money = exists().where(
        ledger_balances.c.account.in_(
            [literal("seller:").concat(owner).concat(f":{kind}") for kind in ("payable", "frozen", "deposit")]
        ),
        ledger_balances.c.currency == advance_refunds.c.currency,
        ledger_balances.c.balance > 0,
    )
    order_money = exists().where(
        orders.c.order_id == advance_refunds.c.order_id, orders.c.held + orders.c.escrowed + orders.c.frozen > 0
    )
    with engine.connect() as conn:
        # Only sellers with some money to look at: one whose receivable cannot be paid yet costs nothing.
        due = (
            select(owner)
            .where(advance_refunds.c.recovery_status == "outstanding", or_(seller_money, order_money))
            .group_by(owner)
            .order_by(owner)
        )
        start = rotation.after if rotation is not None else ""
        sellers = list(conn.execute(due.where(owner > start).limit(batch)).scalars())
        if start and len(sellers) < batch:  # wrap around to the first ids
            sellers += conn.execute(due.where(owner <= start).limit(batch - len(sellers))).scalars()
    if rotation is not None:
        rotation.after = sellers[-1] if sellers else ""
    steps = 0
    for seller_id in sellers:

        def work(conn: Connection, s: str = seller_id) -> int:
            return len(recover_seller(conn, SYSTEM, now, s, policies))

        try:
            steps += transaction(engine, work)
        except InsufficientFunds:
            log.warning("recovery_deferred", seller_id=seller_id)
    return steps


# --- write-off and cancellation -----------------------------------------------------------------


def write_off_locked(conn: Connection, actor: Actor, now: datetime, r: Any, amount: int | None, reason: str) -> int:
    """Write off part or all of the locked refund's outstanding receivable; returns the amount."""
    if r.recovery_status != "outstanding":
        raise IllegalTransition(
            f"refund {r.id}: recovery is {r.recovery_status}; only an outstanding receivable is written off"
        )
    outstanding = outstanding_of(r)
    value = outstanding if amount is None else amount
    if value <= 0 or value > outstanding:
        raise InvalidInput(
            f"write-off of {value} must be between 1 and the {outstanding} {r.currency} outstanding", field="amount"
        )
    money = Money(value, r.currency)
    Ledger(conn).post(
        Entry(
            "advance_refund_written_off",
            (Posting(seller_account(r.seller_id, "owed"), money), Posting(RECOVERABLE_ADVANCES, -money)),
            memo=r.id,
        ),
        now=now,
        request_id=actor.request_id,
    )
    written_off = int(r.written_off) + value
    done = written_off + int(r.recovered) == int(r.amount)
    conn.execute(
        update(advance_refunds)
        .where(advance_refunds.c.id == r.id)
        .values(written_off=written_off, recovery_status="written_off" if done else "outstanding", updated_at=now)
    )
    data = {"refund_id": r.id, "seller_id": r.seller_id, "amount": money.to_wire(),
            "outstanding": {"amount": outstanding - value, "currency": r.currency}}  # fmt: skip
    audit.record(conn, actor, "refund.written_off", r.id, now=now, reason=reason, data=data)
    events.emit(conn, "recovery.written_off", data, now=now)
    return value


def _hold_to_restore(conn: Connection, order_id: str, now: datetime) -> Any:
    """The hold whose terms money given back by a failed refund is held under again, or None.

    Money an advance refund took from a hold goes back under the terms that hold has now:
    the hold (live, or applied whole) that runs longest, if it still runs. None when every
    hold on the order has been released or has ended, or its deadline or claim window has
    passed meanwhile: then the money goes where that hold's end sent the rest (escrow, or
    the seller), never held past the hold's own deadline and the jurisdiction's cap.
    """
    rows = conn.execute(select(holds).where(holds.c.order_id == order_id, holds.c.status.in_((*LIVE, "applied")))).all()
    running = [
        h for h in rows if h.expires_at > now and (h.claim_window_ends_at is None or h.claim_window_ends_at > now)
    ]
    return max(running, key=lambda h: (h.expires_at, h.id), default=None)


def _restore_hold(
    conn: Connection, actor: Actor, now: datetime, o: Any, amount: int, refund_id: str, model: Any, *, confirmed: bool
) -> None:
    """Hold again what a failed advance refund had taken from the order's holds.

    A new hold, not a revived one: the old holds' history (applied to the recovery) stays
    as it happened. It takes `model`'s terms as they are now: its deadline and cap, its
    findings, and its counter-notice and claim window if it was contested.
    """
    contested = model.claim_window_ends_at is not None
    hold_id = new_id("hld")
    reason = f"restored: advance refund {refund_id} failed, its recovery from this order is undone"
    finding_ids = list(model.finding_ids or [])
    conn.execute(
        holds.insert(),
        {
            "id": hold_id, "order_id": o.order_id, "seller_id": o.seller_id, "currency": o.currency,
            "amount": amount, "original_amount": amount, "status": "contested" if contested else "active",
            "reason": reason, "finding_ids": finding_ids, "confirmed": confirmed, "expires_at": model.expires_at,
            "max_expires_at": model.max_expires_at, "claim_window_ends_at": model.claim_window_ends_at,
            "counter_notice": model.counter_notice, "created_at": now, "updated_at": now,
        },
    )  # fmt: skip
    money = {"amount": amount, "currency": o.currency}
    audit.record(conn, actor, "hold.placed", hold_id, now=now, reason=reason,
                 data={"order_id": o.order_id, "amount": money, "finding_ids": finding_ids,
                       "terms_of": model.id})  # fmt: skip
    event = {"hold_id": hold_id, "order_id": o.order_id, "seller_id": o.seller_id, "amount": money}
    events.emit(conn, "hold.placed", event, now=now)


def undo_legs(conn: Connection, actor: Actor, now: datetime, r: Any, seller_frozen: bool) -> tuple[list[Posting], int]:
    """Give the current attempt's recoveries back to where they came from, for a failed refund.

    Returns the postings crediting the sources (the caller adds them to the reversing entry,
    which debits the guarantee fund by as much) and the total given back. Money recovered by a
    deposit confiscation stays in the guarantee fund: the confiscation itself stands.

    Money taken from an order goes back to what it was: money a hold intercepted is held
    again (in `order:held` before confirmation, tied in `seller:frozen` after it) under a
    restored hold, because a failed refund must not turn intercepted money into the seller's;
    unheld escrow goes back to escrow, or, if the order was confirmed since, where its
    confirmation would have sent it.
    """
    legs: dict[str, int] = defaultdict(int)
    back = 0
    for rec in recoveries_of(conn, r.id, int(r.attempt)):
        conn.execute(update(advance_recoveries).where(advance_recoveries.c.id == rec.id).values(undone=True))
        amount = int(rec.amount)
        if rec.source == "confiscation":
            continue
        back += amount
        if rec.source == "order_held":
            o = conn.execute(select(orders).where(orders.c.order_id == rec.order_id)).one()
            p = parts_of(o)
            intercepted = rec.source_account != order_escrow(o.order_id)  # from order:held or tied frozen
            model = _hold_to_restore(conn, o.order_id, now) if intercepted else None
            if o.confirmed_at is None and model is not None:
                legs[order_held(o.order_id)] += amount
                save_parts(conn, o, Parts(p.escrowed, p.held + amount, p.frozen, p.released, p.refunded - amount))
                _restore_hold(conn, actor, now, o, amount, r.id, model, confirmed=False)
            elif o.confirmed_at is None:
                legs[order_escrow(o.order_id)] += amount
                save_parts(conn, o, Parts(p.escrowed + amount, p.held, p.frozen, p.released, p.refunded - amount))
            elif model is not None or seller_frozen:
                legs[seller_account(r.seller_id, "frozen")] += amount
                save_parts(conn, o, Parts(p.escrowed, p.held, p.frozen + amount, p.released, p.refunded - amount))
                if model is not None:
                    _restore_hold(conn, actor, now, o, amount, r.id, model, confirmed=True)
            else:
                legs[seller_account(r.seller_id, "payable")] += amount
                save_parts(conn, o, Parts(p.escrowed, p.held, p.frozen, p.released + amount, p.refunded - amount))
        elif rec.source in ("payable", "frozen"):
            # Untied proceeds (frozen recoveries take only what no hold ties) go back where
            # the seller's proceeds go now: frozen stays frozen only while the seller is.
            legs[seller_account(r.seller_id, "frozen" if seller_frozen else "payable")] += amount
        else:
            legs[str(rec.source_account)] += amount
        data = {"refund_id": r.id, "recovery_id": rec.id, "source": rec.source,
                "amount": {"amount": amount, "currency": r.currency}}  # fmt: skip
        audit.record(conn, actor, "refund.recovery_undone", r.id, now=now, data=data)
    postings = [Posting(account, Money(amount, r.currency)) for account, amount in sorted(legs.items()) if amount]
    return postings, back


def unrecovered_on(conn: Connection, seller_id: str, currency: str) -> list[Any]:
    """The seller's outstanding receivables in `currency`, locked, oldest first."""
    ids = (
        conn.execute(
            select(advance_refunds.c.id).where(
                and_(
                    advance_refunds.c.seller_id == seller_id,
                    advance_refunds.c.currency == currency,
                    advance_refunds.c.recovery_status == "outstanding",
                )
            )
        )
        .scalars()
        .all()
    )
    if not ids:
        return []
    rows = conn.execute(
        select(advance_refunds).where(advance_refunds.c.id.in_(list(ids))).order_by(advance_refunds.c.id)
        .with_for_update()
    ).all()  # fmt: skip
    return sorted(rows, key=lambda row: (row.created_at, row.id))
