"""Outbox delivery and the application of rail outcomes (worker results and webhooks alike).

`deliver_due` is one round of the outbox (see escrow.outbox for the states): claim in one
short transaction, call each rail with no transaction open, record each outcome in a second
transaction. `apply` is the single place an outcome (from a receipt, a status query or a
verified webhook) turns into a ledger entry, an event and an audit record, so the same fact
arriving twice, late or out of order changes the books once.

Invariant 4 (at most once, at least once): every call carries the instruction's stable key;
an instruction that was attempted before (its worker may have died after sending) is first
looked up by key, and sent again, with the same key, only when the rail never received it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, select

from escrow import audit, events, outbox
from escrow.audit import SYSTEM
from escrow.errors import EscrowError, InvalidInput
from escrow.outbox import Instruction, Outcome, Rails
from escrow.persistence.db import transaction
from escrow.persistence.tables import outbox_instructions
from escrow.ports import (
    BankAccount,
    BankEvent,
    BankEventKind,
    CardEvent,
    CardEventKind,
    CardRefund,
    Clock,
    CreditTransfer,
    InstructionConflict,
    OutcomeUnknown,
    RailError,
    RailRequestRefused,
    RailUnavailable,
    RefundState,
    TransferState,
)
from escrow.service import advance_refunds, payouts, refunds
from escrow.service.payout_accounts import destination_of
from escrow.settings import Settings

log = structlog.get_logger(__name__)

_TRANSFER_OUTCOMES: dict[TransferState, Outcome] = {
    TransferState.ACCEPTED: Outcome("accepted"),
    TransferState.BOOKED: Outcome("booked"),
    TransferState.RETURNED: Outcome("returned"),
}
_REFUND_OUTCOMES: dict[RefundState, Outcome] = {
    RefundState.PENDING: Outcome("accepted"),
    RefundState.SUCCEEDED: Outcome("succeeded"),
}


@dataclass(frozen=True, slots=True)
class Policy:
    """Delivery limits, from settings."""

    attempts_max: int
    backoff_base_ms: int
    backoff_cap_ms: int
    lease: timedelta
    poll: timedelta
    batch: int

    @staticmethod
    def of(settings: Settings) -> Policy:
        return Policy(
            attempts_max=settings.outbox_attempts_max,
            backoff_base_ms=settings.outbox_backoff_base_ms,
            backoff_cap_ms=settings.outbox_backoff_cap_ms,
            lease=timedelta(milliseconds=settings.outbox_lease_ms),
            poll=timedelta(milliseconds=settings.outbox_poll_ms),
            batch=settings.outbox_batch,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one delivery attempt learnt: an outcome, or why there is none yet."""

    outcome: Outcome | None = None
    retry_error: str | None = None  # rail down or outcome unknown: try again later, same key
    fatal_error: str | None = None  # refused, conflict: stop and let a human look
    destination: dict[str, Any] | None = None  # a resolved bank destination to remember


# --- applying outcomes ------------------------------------------------------------------------


def apply(
    conn: Connection,
    key: str,
    outcome: Outcome,
    now: datetime,
    *,
    lease_token: str | None = None,
    next_poll_at: datetime | None = None,
    destination: dict[str, Any] | None = None,
) -> bool:
    """Apply `outcome` to the instruction with `key` and its payout or refund, in the caller's transaction.

    With `lease_token` (the worker) nothing is written unless the lease is still held.
    Returns whether anything changed; an unknown key is ignored (not one of ours).
    """
    head = conn.execute(
        select(outbox_instructions.c.kind, outbox_instructions.c.object_id).where(outbox_instructions.c.key == key)
    ).one_or_none()
    if head is None:
        log.warning("rail_outcome_for_unknown_key", key=key, outcome=outcome.kind)
        return False
    # The global lock order: seller (shared) / order, then payout / refund, then the instruction.
    if head.kind == "payout":
        p, frozen = payouts.lock_payout(conn, head.object_id, now)
        row = outbox.lock_by_key(conn, key)
        if lease_token is not None and not outbox.still_ours(row, lease_token):
            return False
        changed = payouts.apply_outcome(conn, p, frozen, outcome, now)
    elif advance_refunds.is_advance_refund(conn, head.object_id):
        r, frozen = advance_refunds.lock_for_outcome(conn, head.object_id, now)
        row = outbox.lock_by_key(conn, key)
        if lease_token is not None and not outbox.still_ours(row, lease_token):
            return False
        changed = advance_refunds.apply_outcome(conn, r, frozen, outcome, now, key=key)
    else:
        o, r, frozen = refunds.lock_refund(conn, head.object_id, now)
        row = outbox.lock_by_key(conn, key)
        if lease_token is not None and not outbox.still_ours(row, lease_token):
            return False
        changed = refunds.apply_outcome(conn, o, r, outcome, now, seller_frozen=frozen)
    if row.state in ("pending", "sent"):
        if outcome.kind in outbox.FINAL_OUTCOMES:
            outbox.mark(conn, row.id, now, state="done", rail_state=outcome.kind, destination=destination)
        elif lease_token is not None:
            outbox.mark(
                conn, row.id, now, state="sent", rail_state=outcome.kind,
                next_attempt_at=next_poll_at or now, destination=destination,
            )  # fmt: skip
    return changed


def bank_outcome(event: BankEvent) -> Outcome:
    kind = {BankEventKind.BOOKED: "booked", BankEventKind.RETURNED: "returned", BankEventKind.REJECTED: "rejected"}
    return Outcome(kind[event.kind], event.reason_code)  # type: ignore[arg-type]  # values are OutcomeKinds


def apply_bank_events(conn: Connection, evts: list[BankEvent], now: datetime) -> int:
    return sum(apply(conn, e.end_to_end_id, bank_outcome(e), now) for e in evts)


def apply_card_events(conn: Connection, evts: list[CardEvent], now: datetime) -> int:
    changed = 0
    for e in evts:
        if e.kind is CardEventKind.CHARGEBACK_CREATED:
            # Chargebacks are recorded for finance; their recovery flow is not built yet.
            data = {"chargeback_id": e.object_id, "payment_reference": e.payment_reference,
                    "amount": e.amount.to_wire(), "reason_code": e.reason_code, "refund_id": e.refund_id}  # fmt: skip
            audit.record(conn, SYSTEM, "chargeback.created", e.object_id, now=now, data=data)
            events.emit(conn, "chargeback.created", data, now=now)
            changed += 1
            continue
        kind = "succeeded" if e.kind is CardEventKind.REFUND_SUCCEEDED else "failed"
        changed += apply(conn, e.object_id, Outcome(kind, e.reason_code), now)  # type: ignore[arg-type]
    return changed


# --- delivering -------------------------------------------------------------------------------


def _bank_account(rails: Rails, destination: dict[str, Any]) -> BankAccount:
    iban = rails.cipher.decrypt(destination["iban_ciphertext"])
    return BankAccount(iban=iban, name=destination["holder_name"], bic=destination.get("bic"))


def _from_transfer(state: TransferState, reason: str | None) -> Outcome | None:
    if state is TransferState.REJECTED:
        return Outcome("rejected", reason)
    return _TRANSFER_OUTCOMES.get(state)  # UNKNOWN: never received


def _from_refund(state: RefundState, reason: str | None) -> Outcome | None:
    if state is RefundState.FAILED:
        return Outcome("failed", reason)
    return _REFUND_OUTCOMES.get(state)


def _ask(rails: Rails, ins: Instruction) -> Outcome | None:
    """What the rail knows of the key; None when it never received it."""
    if ins.rail == "bank":
        status = rails.bank.transfer_status(ins.key)
        return _from_transfer(status.state, status.reason_code)
    refund = rails.card.refund_status(ins.key)
    return _from_refund(refund.state, refund.failure_reason)


def _send(rails: Rails, ins: Instruction, destination: dict[str, Any]) -> Outcome | None:
    if ins.rail == "bank":
        receipt = rails.bank.send_credit_transfer(
            CreditTransfer(
                end_to_end_id=ins.key,
                amount=ins.amount,
                creditor=_bank_account(rails, destination),
                remittance=f"{ins.kind} {ins.object_id}",
            )
        )
        return _from_transfer(receipt.state, receipt.reason_code)
    card = rails.card.refund(
        CardRefund(refund_id=ins.key, payment_reference=destination["payment_reference"], amount=ins.amount)
    )
    return _from_refund(card.state, card.failure_reason)


def attempt(rails: Rails, ins: Instruction, destination: dict[str, Any]) -> Attempt:
    """One delivery attempt, outside any transaction. Never raises a rail error."""
    try:
        if ins.state == "sent" or ins.attempts > 1:
            known = _ask(rails, ins)
            if known is not None or ins.state == "sent":
                return Attempt(outcome=known or Outcome("accepted"))
        return Attempt(outcome=_send(rails, ins, destination))
    except (RailUnavailable, OutcomeUnknown) as exc:
        return Attempt(retry_error=f"{exc.code}: {exc.detail}")
    except (InstructionConflict, RailRequestRefused) as exc:
        return Attempt(fatal_error=f"{exc.code}: {exc.detail}")
    except RailError as exc:  # an unreadable answer: ask again later
        return Attempt(retry_error=f"{exc.code}: {exc.detail}")
    except InvalidInput as exc:  # InvalidInstruction: the payload can never be sent
        return Attempt(fatal_error=f"{exc.code}: {exc.detail}")


def _resolve_destination(engine: Engine, ins: Instruction) -> dict[str, Any] | None:
    """A bank refund names the buyer's party; its account is looked up (and kept) at first delivery."""
    if ins.rail != "bank" or "iban_ciphertext" in ins.destination:
        return ins.destination
    with engine.connect() as conn:
        return destination_of(conn, ins.destination["party_id"])


def record(engine: Engine, ins: Instruction, result: Attempt, policy: Policy, now: datetime) -> None:
    """The second transaction: the outcome, or the next attempt, if the lease is still ours."""

    def work(conn: Connection) -> None:
        if result.outcome is not None:
            apply(
                conn, ins.key, result.outcome, now, lease_token=ins.lease_token,
                next_poll_at=now + _poll_wait(policy, ins), destination=result.destination,
            )  # fmt: skip
            return
        row = outbox.lock_by_key(conn, ins.key)
        if not outbox.still_ours(row, ins.lease_token):
            return
        error = result.fatal_error or result.retry_error or "no outcome"
        data = {"key": ins.key, "kind": ins.kind, "object_id": ins.object_id, "error": error[:500]}
        if result.fatal_error is not None:
            outbox.mark(conn, row.id, now, state="dead", last_error=error)
            audit.record(conn, SYSTEM, "instruction.dead", ins.id, now=now, data=data)
            events.emit(conn, "instruction.dead", data, now=now)
            log.error("instruction_dead", key=ins.key, error=error[:500])
            return
        # A retryable failure (rail down, outcome unknown, no destination yet) never ends the
        # instruction: its money is in transit and must arrive at least once. Past the attempt
        # bound it goes on at the capped backoff, and people are told once.
        if ins.attempts == policy.attempts_max:
            audit.record(conn, SYSTEM, "instruction.stuck", ins.id, now=now, data=data)
            events.emit(conn, "instruction.stuck", data, now=now)
            log.error("instruction_stuck", key=ins.key, attempts=ins.attempts, error=error[:500])
        wait = outbox.backoff(ins.attempts, policy.backoff_base_ms, policy.backoff_cap_ms)
        outbox.mark(
            conn, row.id, now, state=ins.state, next_attempt_at=now + wait, last_error=error,
            destination=result.destination,
        )  # fmt: skip
        log.warning("instruction_retry_scheduled", key=ins.key, attempts=ins.attempts, wait_s=wait.total_seconds())

    transaction(engine, work)


def _poll_wait(policy: Policy, ins: Instruction) -> timedelta:
    """When to ask the rail about a sent instruction whose outcome no webhook has brought yet."""
    return policy.poll


def deliver_due(engine: Engine, rails: Rails, clock: Clock, policy: Policy) -> int:
    """One round: claim due instructions, deliver each, record each outcome. Returns how many were handled.

    The lease must outlast one rail call (the adapter's timeout times its bounded attempts);
    it is renewed before each call, so a batch may take longer than one lease.
    """
    claimed = transaction(engine, lambda conn: outbox.claim(conn, clock.now(), lease=policy.lease, batch=policy.batch))
    for ins in claimed:

        def renew(conn: Connection, i: Instruction = ins) -> bool:
            return outbox.renew(conn, i.id, i.lease_token, clock.now(), lease=policy.lease)

        if not transaction(engine, renew):
            log.warning("instruction_lease_lost", key=ins.key)
            continue
        destination = _resolve_destination(engine, ins)
        if destination is None:
            result = Attempt(retry_error=f"party {ins.destination.get('party_id')} has no payout account")
        else:
            result = attempt(rails, ins, destination)
            if destination is not ins.destination:
                result = Attempt(result.outcome, result.retry_error, result.fatal_error, destination)
        try:
            record(engine, ins, result, policy, clock.now())
        except EscrowError:
            log.exception("instruction_outcome_not_recorded", key=ins.key)
    return len(claimed)
