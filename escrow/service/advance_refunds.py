"""Advance refunds (refund-first, DESIGN §2 flow 6, §3): the guarantee fund pays the buyer now.

Lifecycle: `pending_approval` (when what the order's buyer would have back unreviewed
passes the jurisdiction's threshold for the currency, or no threshold is configured for
it) → `submitted` → `succeeded` | `failed`; or `pending_approval` → `rejected`. A failed
refund can be retried to another destination (`submitted` again, under a new outbox key
`{id}-{attempt}`). Its receivable (escrow.service.recovery) is `none` until money leaves,
then `outstanding` → `recovered` | `written_off`, or `cancelled` when the payment fails.

Delivery goes through the transactional outbox exactly like ordinary refunds: kind `refund`,
`object_id` the refund id, card refunds to the original payment (`payment_reference`), bank
refunds to the payout account registered for a party (`party_id`, the buyer by default).
Outcomes come back through `lock_for_outcome` + `apply_outcome` (see the worker wiring in
the module's caller), or `fail_refund` for an instruction that never reached the rail.

Outcome entries:

    succeeded/booked   in_transit:refunds → clearing:{card|bank}
    failed/rejected    one entry reversing the submission (`reverses` = its entry id):
                       in_transit:refunds -A, the receivable's outstanding part cancelled
                       (owed +, recoverable_advances -), recovered money back to its sources,
                       and the guarantee fund +A minus what went back to the sources
    returned (bank)    booked first if it was not, then as a failure but from clearing:bank

The cap: an order's buyer is never refunded more than they paid. Ordinary refunds standing,
plus advance refunds pending approval, submitted or succeeded, never exceed the amount; the
order row is locked while this is checked, so concurrent requests cannot both pass.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, func, select, update

from escrow import audit, events, outbox
from escrow.audit import SYSTEM, Actor
from escrow.errors import Conflict, Forbidden, IllegalTransition, InsufficientFunds, InvalidInput, NotFound
from escrow.ids import new_id
from escrow.ledger import Entry, Ledger, Posting, transfer
from escrow.ledger.chart import GUARANTEE_FUND, IN_TRANSIT_REFUNDS, seller_account
from escrow.money import Money
from escrow.outbox import Outcome
from escrow.persistence.tables import advance_recoveries, advance_refunds, orders
from escrow.service.orders import lock_order, seller_is_frozen
from escrow.service.recovery import (
    RECOVERABLE_ADVANCES,
    lock_seller_exclusive,
    outstanding_of,
    recover_seller,
    recovered_into_refunded,
    undo_legs,
    write_off_locked,
)
from escrow.settings import Policies

log = structlog.get_logger(__name__)

ACTIVE = ("pending_approval", "submitted", "succeeded")  # what counts against the order's cap
CLEARING_BANK = "clearing:bank"


class FourEyesRequired(Forbidden):
    code = "four_eyes_required"
    title = "The approver must not be the requester"


class ExceedsRefundableAmount(Conflict):
    code = "exceeds_refundable_amount"
    title = "More than the buyer paid and has not had back"


class GuaranteeFundInsufficient(InsufficientFunds):
    code = "guarantee_fund_insufficient"
    title = "The guarantee fund cannot pay this refund"


class CurrencyMismatch(InvalidInput):
    code = "currency_mismatch"
    title = "Amount in another currency than its object"


# --- reading ----------------------------------------------------------------------------------


def refundable_amount(conn: Connection, o: Any) -> int:
    """What the buyer of order `o` can still be refunded, across ordinary and advance refunds.

    Ordinary refunds are the order's `refunded` part less what recoveries moved there (that
    money repays an advance refund, which is counted once, by its own amount).
    """
    ordinary = int(o.refunded) - recovered_into_refunded(conn, o.order_id)
    advanced = conn.execute(
        select(func.coalesce(func.sum(advance_refunds.c.amount), 0)).where(
            advance_refunds.c.order_id == o.order_id, advance_refunds.c.status.in_(ACTIVE)
        )
    ).scalar_one()
    return int(o.amount) - ordinary - int(advanced)


def refund_view(conn: Connection, r: Any) -> dict[str, Any]:
    currency = r.currency
    recovered = conn.execute(
        select(advance_recoveries)
        .where(
            advance_recoveries.c.refund_id == r.id,
            advance_recoveries.c.attempt == r.attempt,
            advance_recoveries.c.undone.is_(False),
        )
        .order_by(advance_recoveries.c.position)
    ).all()
    open_ = r.recovery_status in ("outstanding", "recovered", "written_off")
    return {
        "id": r.id,
        "kind": "advance",
        "order_id": r.order_id,
        "seller_id": r.seller_id,
        "buyer_id": r.buyer_id,
        "amount": {"amount": r.amount, "currency": currency},
        "reason": r.reason,
        "status": r.status,
        "approval": {
            "required": r.approval_required,
            "requested_by": r.requested_by,
            "decided_by": r.decided_by,
            "decision_reason": r.decision_reason,
        },
        "attempt": r.attempt,
        "destination": r.destination,
        "failure_reason": r.failure_reason,
        "recovery": {
            "status": r.recovery_status,
            "outstanding": {"amount": outstanding_of(r) if open_ else 0, "currency": currency},
            "recovered": [
                {
                    "source": x.source,
                    "amount": {"amount": x.amount, "currency": currency},
                    "order_id": x.order_id,
                    "recovered_at": x.created_at,
                }
                for x in recovered
            ],
            "written_off": {"amount": r.written_off, "currency": currency},
        },
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def _row(conn: Connection, refund_id: str) -> Any:
    row = conn.execute(select(advance_refunds).where(advance_refunds.c.id == refund_id)).one_or_none()
    if row is None:
        raise NotFound(f"refund {refund_id} not found")
    return row


def get_refund(conn: Connection, refund_id: str) -> dict[str, Any]:
    return refund_view(conn, _row(conn, refund_id))


def list_refunds(
    conn: Connection,
    *,
    status: str | None,
    order_id: str | None,
    seller_id: str | None,
    starting_after: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], bool]:
    query = select(advance_refunds)
    if status:
        query = query.where(advance_refunds.c.status == status)
    if order_id:
        query = query.where(advance_refunds.c.order_id == order_id)
    if seller_id:
        query = query.where(advance_refunds.c.seller_id == seller_id)
    if starting_after:
        query = query.where(advance_refunds.c.id > starting_after)
    rows = conn.execute(query.order_by(advance_refunds.c.id).limit(limit + 1)).all()
    return [refund_view(conn, r) for r in rows[:limit]], len(rows) > limit


# --- locking ----------------------------------------------------------------------------------


def _ids(conn: Connection, refund_id: str) -> Any:
    head = conn.execute(
        select(advance_refunds.c.seller_id, advance_refunds.c.order_id).where(advance_refunds.c.id == refund_id)
    ).one_or_none()
    if head is None:
        raise NotFound(f"refund {refund_id} not found")
    return head


def _lock_row(conn: Connection, refund_id: str) -> Any:
    return conn.execute(select(advance_refunds).where(advance_refunds.c.id == refund_id).with_for_update()).one()


def _lock_exclusive(conn: Connection, refund_id: str, now: datetime) -> tuple[Any, Any]:
    """(order, refund) after the seller row exclusively: for paths that submit and recover."""
    head = _ids(conn, refund_id)
    lock_seller_exclusive(conn, head.seller_id, now)
    o = lock_order(conn, head.order_id)
    return o, _lock_row(conn, refund_id)


def is_advance_refund(conn: Connection, object_id: str) -> bool:
    """Whether an outbox `refund` instruction's object is an advance refund (else an ordinary one)."""
    return conn.execute(select(advance_refunds.c.id).where(advance_refunds.c.id == object_id)).first() is not None


def lock_for_outcome(conn: Connection, refund_id: str, now: datetime) -> tuple[Any, bool]:
    """(refund row, seller frozen?) locked in the global order: seller (shared), order, refund."""
    head = _ids(conn, refund_id)
    frozen = seller_is_frozen(conn, head.seller_id, now)
    lock_order(conn, head.order_id)
    return _lock_row(conn, refund_id), frozen


# --- requesting, approving, submitting ----------------------------------------------------------


def _default_destination(o: Any) -> dict[str, Any]:
    if o.payment_method == "card":
        return {"rail": "card", "payment_reference": o.payment_reference}
    return {"rail": "bank", "party_id": o.buyer_id}


def _announce(conn: Connection, actor: Actor, r: Any, action: str, now: datetime, reason: str | None = None,
              **extra: Any) -> None:  # fmt: skip
    data = {"refund_id": r.id, "kind": "advance", "order_id": r.order_id, "seller_id": r.seller_id,
            "amount": {"amount": r.amount, "currency": r.currency}, "reason": reason, **extra}  # fmt: skip
    audit.record(conn, actor, action, r.id, now=now, reason=reason, data=data)
    events.emit(conn, action, data, now=now)


def _submit(
    conn: Connection, actor: Actor, now: datetime, policies: Policies, r: Any, destination: dict[str, Any]
) -> None:
    """Pay from the guarantee fund, open the receivable, write the outbox instruction; then recover."""
    attempt = int(r.attempt) + 1
    key = r.id if attempt == 1 else f"{r.id}-{attempt}"
    money = Money(int(r.amount), r.currency)
    entry = Entry(
        "advance_refund_submitted",
        (
            Posting(GUARANTEE_FUND, -money),
            Posting(IN_TRANSIT_REFUNDS, money),
            Posting(seller_account(r.seller_id, "owed"), -money),
            Posting(RECOVERABLE_ADVANCES, money),
        ),
        memo=r.id,
    )
    try:
        posted = Ledger(conn).post(entry, now=now, request_id=actor.request_id)
    except InsufficientFunds as exc:
        raise GuaranteeFundInsufficient(
            f"the guarantee fund holds less than {money}; finance must top it up (POST /v1/guarantee-fund/top-ups)",
            accounts=exc.extra.get("accounts", [GUARANTEE_FUND]),
        ) from None
    rail = destination["rail"]
    conn.execute(
        update(advance_refunds)
        .where(advance_refunds.c.id == r.id)
        .values(
            status="submitted", attempt=attempt, rail=rail, destination=destination, instruction_key=key,
            entry_id=posted.id, failure_reason=None, recovery_status="outstanding", recovered=0, written_off=0,
            updated_at=now,
        )
    )  # fmt: skip
    outbox.enqueue(
        conn,
        rail=rail,
        kind="refund",
        key=key,
        object_id=r.id,
        amount=money,
        destination={k: v for k, v in destination.items() if k != "rail"},
        now=now,
    )
    _announce(conn, actor, r, "refund.submitted", now, attempt=attempt, destination=destination, key=key)
    recover_seller(conn, actor, now, r.seller_id, policies)


def request_refund(
    conn: Connection, actor: Actor, now: datetime, policies: Policies, *, order_id: str, amount: Money, reason: str
) -> tuple[int, dict[str, Any]]:
    """Create an advance refund; submitted at once at or below the threshold, else pending approval.

    Raises NotFound, CurrencyMismatch, ExceedsRefundableAmount, GuaranteeFundInsufficient.
    """
    seller_id = conn.execute(select(orders.c.seller_id).where(orders.c.order_id == order_id)).scalar_one_or_none()
    if seller_id is None:
        raise NotFound(f"order {order_id} not found")
    lock_seller_exclusive(conn, seller_id, now)  # seller before order: the global lock order
    o = lock_order(conn, order_id)
    if amount.currency != o.currency:
        raise CurrencyMismatch(f"order {order_id} is in {o.currency}, not {amount.currency}", field="amount.currency")
    room = refundable_amount(conn, o)
    if amount.amount_minor > room:
        raise ExceedsRefundableAmount(
            f"refund of {amount.amount_minor} exceeds the {room} {o.currency} the buyer of order {order_id} paid"
            " and has not had back (ordinary and advance refunds, pending ones included)"
        )
    threshold = policies.for_jurisdiction(o.jurisdiction).approval_threshold.get(o.currency)
    # The threshold bounds what one order's buyer gets back without a second pair of eyes,
    # in total: two refunds of 40,000 against a threshold of 50,000 must not both go
    # unreviewed. (The order is locked: a concurrent request waits and then counts this one.)
    unreviewed = conn.execute(
        select(func.coalesce(func.sum(advance_refunds.c.amount), 0)).where(
            advance_refunds.c.order_id == order_id,
            advance_refunds.c.approval_required.is_(False),
            advance_refunds.c.status.in_(("submitted", "succeeded")),
        )
    ).scalar_one()
    needs_approval = threshold is None or int(unreviewed) + amount.amount_minor > threshold
    refund_id = new_id("ref")
    conn.execute(
        advance_refunds.insert(),
        {
            "id": refund_id, "order_id": order_id, "seller_id": o.seller_id, "buyer_id": o.buyer_id,
            "jurisdiction": o.jurisdiction, "currency": o.currency, "amount": amount.amount_minor, "reason": reason,
            "status": "pending_approval", "approval_required": needs_approval, "requested_by": actor.principal_id,
            "decided_by": None, "decision_reason": None, "attempt": 0, "rail": None, "destination": None,
            "instruction_key": None, "entry_id": None, "failure_reason": None, "recovery_status": "none",
            "recovered": 0, "written_off": 0, "created_at": now, "updated_at": now,
        },
    )  # fmt: skip
    r = _row(conn, refund_id)
    _announce(conn, actor, r, "refund.requested", now, reason, approval_required=needs_approval,
              threshold=None if threshold is None else {"amount": threshold, "currency": o.currency})  # fmt: skip
    if not needs_approval:
        _submit(conn, actor, now, policies, r, _default_destination(o))
    return 201, get_refund(conn, refund_id)


def approve_refund(
    conn: Connection, actor: Actor, now: datetime, policies: Policies, refund_id: str, reason: str | None
) -> dict[str, Any]:
    """A supervisor who is not the requester approves: the refund is submitted.

    Raises NotFound, IllegalTransition (not pending), FourEyesRequired, GuaranteeFundInsufficient.
    """
    o, r = _lock_exclusive(conn, refund_id, now)
    if r.status != "pending_approval":
        raise IllegalTransition(f"refund {refund_id} is {r.status}; only a pending one can be approved")
    if r.requested_by == actor.principal_id:
        raise FourEyesRequired(f"refund {refund_id} was requested by this principal; another supervisor must approve")
    # Counted against the order since it was requested; still checked, in case a refund that
    # did not count it (an ordinary refund) used the room meanwhile. It stays pending (reject it).
    room = refundable_amount(conn, o)
    if room < 0:
        raise ExceedsRefundableAmount(
            f"refund {refund_id} of {r.amount} {r.currency} now exceeds what the buyer of order {o.order_id} paid"
            f" and has not had back by {-room}; reject it"
        )
    conn.execute(
        update(advance_refunds)
        .where(advance_refunds.c.id == refund_id)
        .values(decided_by=actor.principal_id, decision_reason=reason, updated_at=now)
    )
    _announce(conn, actor, r, "refund.approved", now, reason)
    _submit(conn, actor, now, policies, _row(conn, refund_id), _default_destination(o))
    return get_refund(conn, refund_id)


def reject_refund(conn: Connection, actor: Actor, now: datetime, refund_id: str, reason: str) -> dict[str, Any]:
    """A supervisor who is not the requester rejects a pending refund; nothing was paid."""
    _, r = _lock_exclusive(conn, refund_id, now)
    if r.status != "pending_approval":
        raise IllegalTransition(f"refund {refund_id} is {r.status}; only a pending one can be rejected")
    if r.requested_by == actor.principal_id:
        raise FourEyesRequired(f"refund {refund_id} was requested by this principal; another supervisor must decide")
    conn.execute(
        update(advance_refunds)
        .where(advance_refunds.c.id == refund_id)
        .values(status="rejected", decided_by=actor.principal_id, decision_reason=reason, updated_at=now)
    )
    _announce(conn, actor, r, "refund.rejected", now, reason)
    return get_refund(conn, refund_id)


def retry_refund(
    conn: Connection,
    actor: Actor,
    now: datetime,
    policies: Policies,
    refund_id: str,
    destination: dict[str, Any],
    reason: str | None,
) -> dict[str, Any]:
    """Pay a failed advance refund again, to `destination`, under a new outbox key.

    Raises NotFound, IllegalTransition (not failed), ExceedsRefundableAmount (the room was
    used meanwhile), GuaranteeFundInsufficient.
    """
    o, r = _lock_exclusive(conn, refund_id, now)
    if r.status != "failed":
        raise IllegalTransition(f"refund {refund_id} is {r.status}; only a failed refund can be retried")
    room = refundable_amount(conn, o)
    if int(r.amount) > room:
        raise ExceedsRefundableAmount(
            f"refund {refund_id} of {r.amount} exceeds the {room} {o.currency} still refundable on order {o.order_id}"
        )
    _announce(conn, actor, r, "refund.retried", now, reason, destination=destination)
    _submit(conn, actor, now, policies, r, destination)
    return get_refund(conn, refund_id)


# --- outcomes -----------------------------------------------------------------------------------


def _fail(
    conn: Connection, actor: Actor, now: datetime, r: Any, seller_frozen: bool, from_account: str, reason: str
) -> None:
    """Reverse the submission: money back to the fund, receivable cancelled, recoveries given back."""
    money = Money(int(r.amount), r.currency)
    outstanding = outstanding_of(r)
    back_legs, back = undo_legs(conn, actor, now, r, seller_frozen)
    legs = [Posting(from_account, -money), *back_legs]
    if money.amount_minor - back:
        legs.append(Posting(GUARANTEE_FUND, Money(money.amount_minor - back, r.currency)))
    if outstanding:
        legs += [
            Posting(seller_account(r.seller_id, "owed"), Money(outstanding, r.currency)),
            Posting(RECOVERABLE_ADVANCES, Money(-outstanding, r.currency)),
        ]
    entry = Entry("advance_refund_failed", tuple(legs), memo=f"{r.id}: {reason}"[:2000], reverses=r.entry_id)
    Ledger(conn).post(entry, now=now, request_id=actor.request_id)
    conn.execute(
        update(advance_refunds)
        .where(advance_refunds.c.id == r.id)
        .values(status="failed", failure_reason=reason[:2000], recovery_status="cancelled", recovered=0,
                written_off=0, updated_at=now)
    )  # fmt: skip
    _announce(conn, actor, r, "refund.failed", now, reason, attempt=r.attempt, returned_to_sources=back)


def apply_outcome(conn: Connection, r: Any, seller_frozen: bool, outcome: Outcome, now: datetime, *, key: str) -> bool:
    """Apply a rail outcome for instruction `key` to the locked advance refund `r`; False when nothing changes.

    Outcomes of an earlier attempt's key, duplicates and late ones change nothing.
    """
    if key != r.instruction_key:
        log.warning("advance_refund_outcome_for_old_attempt", refund_id=r.id, key=key, outcome=outcome.kind)
        return False
    if r.status not in ("submitted", "succeeded"):
        return False
    money = Money(int(r.amount), r.currency)
    rail_clearing = "clearing:card" if r.rail == "card" else CLEARING_BANK
    kind = outcome.kind
    if kind == "accepted":
        return False
    if kind in ("failed", "rejected"):
        if r.status == "succeeded":
            return False  # a late decline after a success changes nothing
        _fail(conn, SYSTEM, now, r, seller_frozen, IN_TRANSIT_REFUNDS, outcome.reason or kind)
        return True
    changed = False
    if r.status == "submitted":
        Ledger(conn).post(
            transfer("advance_refund_succeeded", IN_TRANSIT_REFUNDS, rail_clearing, money, memo=r.id), now=now
        )
        conn.execute(update(advance_refunds).where(advance_refunds.c.id == r.id).values(status="succeeded",
                                                                                        updated_at=now))  # fmt: skip
        _announce(conn, SYSTEM, r, "refund.succeeded", now)
        changed = True
    if kind == "returned":
        fresh = _lock_row(conn, r.id)
        _fail(conn, SYSTEM, now, fresh, seller_frozen, rail_clearing, f"returned: {outcome.reason or 'returned'}")
        changed = True
    return changed


def fail_refund(conn: Connection, actor: Actor, now: datetime, refund_id: str, reason: str) -> dict[str, Any]:
    """Record that a submitted advance refund failed although the rail never had it (instruction dead or unsent).

    Refuses (IllegalTransition) while the rail may hold the instruction: its outcome must come
    from the rail then (webhook or status poll, through `apply_outcome`).
    """
    r, frozen = lock_for_outcome(conn, refund_id, now)
    if r.status != "submitted":
        raise IllegalTransition(f"refund {refund_id} is {r.status}; only a submitted refund can fail")
    ins = outbox.lock_by_key(conn, r.instruction_key)
    # A dead instruction that was ever attempted may have been executed (its last answer lost):
    # failing it here and retrying elsewhere could refund the buyer twice.
    if ins is not None and (ins.state == "sent" or (ins.state in ("pending", "dead") and ins.attempts > 0)):
        raise IllegalTransition(f"refund {refund_id}: the rail may hold its instruction; wait for the rail's outcome")
    _fail(conn, actor, now, r, frozen, IN_TRANSIT_REFUNDS, reason)
    if ins is not None and ins.state == "pending":
        outbox.mark(conn, ins.id, now, state="done", rail_state="failed", last_error=f"failed by staff: {reason}")
    return get_refund(conn, refund_id)


# --- recovery and write-off on demand -------------------------------------------------------------


def recover_refund(conn: Connection, actor: Actor, now: datetime, policies: Policies, refund_id: str) -> dict[str, Any]:
    """Recover now what the refund's seller owes (oldest receivable first); the refund's view after it."""
    head = _ids(conn, refund_id)
    steps = recover_seller(conn, actor, now, head.seller_id, policies)
    view = get_refund(conn, refund_id)
    view["recovered_now"] = steps
    return view


def write_off(
    conn: Connection, actor: Actor, now: datetime, refund_id: str, amount: Money | None, reason: str
) -> dict[str, Any]:
    """Write off part or all of what is outstanding; the loss stays with the guarantee fund."""
    r, _ = lock_for_outcome(conn, refund_id, now)
    if amount is not None and amount.currency != r.currency:
        raise CurrencyMismatch(f"refund {refund_id} is in {r.currency}, not {amount.currency}", field="amount.currency")
    write_off_locked(conn, actor, now, r, None if amount is None else amount.amount_minor, reason)
    return get_refund(conn, refund_id)


# --- the guarantee fund ---------------------------------------------------------------------------


def top_up_guarantee_fund(
    conn: Connection, actor: Actor, now: datetime, *, amount: Money, reference: str, reason: str | None
) -> dict[str, Any]:
    """Finance paid money into the guarantee fund (bank transfer into the platform)."""
    posted = Ledger(conn).post(
        transfer("guarantee_fund_topped_up", CLEARING_BANK, GUARANTEE_FUND, amount, memo=reference),
        now=now,
        request_id=actor.request_id,
    )
    data = {"amount": amount.to_wire(), "reference": reference, "entry_id": posted.id}
    audit.record(conn, actor, "guarantee_fund.topped_up", GUARANTEE_FUND, now=now, reason=reason, data=data)
    events.emit(conn, "guarantee_fund.topped_up", data, now=now)
    return {**data, "created_at": now, "fund": guarantee_fund_view(conn)}


def guarantee_fund_view(conn: Connection) -> dict[str, Any]:
    """Per currency: the fund's balance and what is advanced and not yet recovered."""
    balances = Ledger(conn).balances([GUARANTEE_FUND, RECOVERABLE_ADVANCES])
    currencies = sorted({c for _, c in balances})
    return {
        "account": GUARANTEE_FUND,
        "currencies": [
            {
                "currency": c,
                "balance": balances.get((GUARANTEE_FUND, c), 0),
                "advanced_outstanding": balances.get((RECOVERABLE_ADVANCES, c), 0),
            }
            for c in currencies
        ],
    }
