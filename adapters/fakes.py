"""In-memory fakes of `BankRail` and `CardRail` for tests of the core.

They keep the promises of the ports, checked by the same contract tests as the real
adapters (tests/contract): idempotent on EndToEndId / refund id, a conflict for a reused key
with other content, declines and rejections as results, UNKNOWN for ids never received,
the adapters' bounded retry of RailUnavailable. They are deterministic: time comes from the
injected `Clock` (use `ManualClock`), ids are counters, and nothing happens until a test
calls `tick()` — which settles what is due and returns the notification bodies the rail
would have sent, to feed to `parse_notification` / `parse_webhook` (their format is the
fakes' own JSON, not ISO 20022: the fakes stand for the port, not for a provider).

Faults are scripted per idempotency key with `script(key, Fault.X, times=n)`:

    UNAVAILABLE             each firing fails one attempt, nothing executed; fewer than
                            ADAPTER_ATTEMPTS_MAX firings end in success, as with the adapter
    RESPONSE_LOST           executed, then OutcomeUnknown
    LOST_BEFORE_PROCESSING  OutcomeUnknown, nothing executed (a timeout before the bank saw it)
    FAIL_AT_SETTLEMENT      accepted, then rejected (bank AM04) / declined (card) at settlement
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from schwifty import IBAN

from adapters.bank.accounts import account_rejection, normalised
from adapters.transport import ADAPTER_ATTEMPTS_MAX
from escrow.errors import InvalidMoney
from escrow.money import Money
from escrow.ports import (
    AccountStatement,
    BankEvent,
    BankEventKind,
    CardEvent,
    CardEventKind,
    CardRefund,
    Clock,
    CreditTransfer,
    EntryDirection,
    InstructionConflict,
    OutcomeUnknown,
    RailMessageUnreadable,
    RailUnavailable,
    RefundReceipt,
    RefundState,
    RefundStatus,
    SettlementItem,
    SettlementItemKind,
    SettlementReport,
    Statement,
    StatementEntry,
    TransferReceipt,
    TransferState,
    TransferStatus,
)

FAKE_ACCOUNT_IBAN = "DE89370400440532013000"
SETTLEMENT_REJECTION_REASON = "AM04"  # what banks say for "insufficient funds" at settlement
CARD_DECLINE_REASON = "refund_declined"
DEFAULT_RETURN_REASON = "AC04"


class Fault(StrEnum):
    """What a scripted key does on its next receipt(s); see the module docstring."""

    UNAVAILABLE = "unavailable"
    RESPONSE_LOST = "response_lost"
    LOST_BEFORE_PROCESSING = "lost_before_processing"
    FAIL_AT_SETTLEMENT = "fail_at_settlement"


class _Script:
    """Faults per key, each with a number of firings left."""

    def __init__(self) -> None:
        self._left: dict[tuple[str, Fault], int] = {}

    def add(self, key: str, fault: Fault, times: int) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        self._left[(key, fault)] = self._left.get((key, fault), 0) + times

    def take(self, key: str, fault: Fault) -> bool:
        left = self._left.get((key, fault), 0)
        if left == 0:
            return False
        self._left[(key, fault)] = left - 1
        return True


def _money_json(amount: Money | None) -> dict[str, Any] | None:
    return None if amount is None else {"amount": amount.amount_minor, "currency": amount.currency}


def _money_from(raw: Any) -> Money | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or type(raw.get("amount")) is not int or not isinstance(raw.get("currency"), str):
        raise RailMessageUnreadable("unreadable amount in a fake notification")
    try:
        return Money(raw["amount"], raw["currency"])
    except InvalidMoney as exc:
        raise RailMessageUnreadable(exc.detail) from exc


def _load(body: bytes, kind: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RailMessageUnreadable(f"not a fake {kind} message") from exc
    if not isinstance(payload, dict) or payload.get("fake") != kind:
        raise RailMessageUnreadable(f"not a fake {kind} message")
    return payload


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")


# --- bank ------------------------------------------------------------------------------------


@dataclass
class _Transfer:
    instruction: CreditTransfer
    state: TransferState
    accepted_at: datetime
    reason_code: str | None = None
    fail_at_settlement: bool = False
    booked_at: datetime | None = None
    returned_at: datetime | None = None
    return_reason: str | None = None
    entry_reference: str | None = None
    return_entry_reference: str | None = None
    executions: int = 0
    requests: int = 1


def _transfer_fingerprint(t: CreditTransfer) -> tuple[object, ...]:
    """What makes two instructions the same transfer (the execution date does not count)."""
    return (t.amount, t.creditor.iban, t.creditor.bic, t.creditor.name, t.remittance)


class FakeBankRail:
    """A `BankRail` in memory; `tick()` books what is due and returns camt-like notifications."""

    def __init__(
        self,
        clock: Clock,
        *,
        account_iban: str = FAKE_ACCOUNT_IBAN,
        settle_delay: timedelta = timedelta(seconds=60),
    ) -> None:
        self._clock = clock
        self._account_iban = account_iban
        self._settle_delay = settle_delay
        self._transfers: dict[str, _Transfer] = {}
        self._script = _Script()
        self._closed_accounts: dict[str, str] = {}
        self._available = True
        self._seq = 0
        self._lock = threading.Lock()

    # -- scripting ----------------------------------------------------------------------------

    def script(self, key: str, fault: Fault, times: int = 1) -> None:
        """Make the next `times` receipts of `key` misbehave (see the module docstring)."""
        with self._lock:
            self._script.add(key, fault, times)

    def close_account(self, iban: str, reason_code: str = DEFAULT_RETURN_REASON) -> None:
        """Transfers to `iban` are rejected at once with `reason_code` (like a closed account)."""
        with self._lock:
            self._closed_accounts[IBAN(iban).compact] = reason_code

    def set_available(self, available: bool) -> None:
        """While unavailable every call raises RailUnavailable (after the emulated retries)."""
        with self._lock:
            self._available = available

    # -- inspection and time --------------------------------------------------------------------

    def executions(self, end_to_end_id: str) -> int:
        """How many times the transfer was taken for execution (the at-most-once check)."""
        with self._lock:
            transfer = self._transfers.get(end_to_end_id)
            return 0 if transfer is None else transfer.executions

    def requests(self, end_to_end_id: str) -> int:
        """How many receipts of `end_to_end_id` the bank saw, replays included."""
        with self._lock:
            transfer = self._transfers.get(end_to_end_id)
            return 0 if transfer is None else transfer.requests

    def moved(self, currency: str) -> Money:
        """Booked minus returned in `currency`: what the ledger must agree with (invariant 2)."""
        with self._lock:
            total = 0
            for t in self._transfers.values():
                if t.instruction.amount.currency == currency and t.booked_at is not None:
                    total += t.instruction.amount.amount_minor if t.returned_at is None else 0
            return Money(total, currency)

    def tick(self) -> list[bytes]:
        """Settle every transfer that is due on the clock; return one notification body each."""
        with self._lock:
            now = self._clock.now()
            bodies: list[bytes] = []
            for transfer in self._transfers.values():
                due = transfer.accepted_at + self._settle_delay
                if transfer.state is not TransferState.ACCEPTED or due > now:
                    continue
                if transfer.fail_at_settlement:
                    transfer.state, transfer.reason_code = TransferState.REJECTED, SETTLEMENT_REJECTION_REASON
                    bodies.append(self._notification(BankEventKind.REJECTED, transfer, due))
                    continue
                transfer.state, transfer.booked_at = TransferState.BOOKED, due
                transfer.entry_reference = self._next_id("NTRY")
                bodies.append(self._notification(BankEventKind.BOOKED, transfer, due))
            return bodies

    def return_transfer(self, end_to_end_id: str, reason_code: str = DEFAULT_RETURN_REASON) -> list[bytes]:
        """The creditor bank sends a booked transfer back now; returns the notification."""
        with self._lock:
            transfer = self._transfers.get(end_to_end_id)
            if transfer is None or transfer.state is not TransferState.BOOKED:
                raise ValueError(f"{end_to_end_id} is not a booked transfer")
            transfer.state = TransferState.RETURNED
            transfer.returned_at = self._clock.now()
            transfer.return_reason = reason_code
            transfer.return_entry_reference = self._next_id("NTRY")
            return [self._notification(BankEventKind.RETURNED, transfer, transfer.returned_at)]

    # -- the port -----------------------------------------------------------------------------

    def send_credit_transfer(self, instruction: CreditTransfer) -> TransferReceipt:
        """Same contract as the real adapter: see `escrow.ports.BankRail`."""
        e2e = instruction.end_to_end_id
        rejection = account_rejection(instruction.creditor)
        if rejection is not None:
            return TransferReceipt(e2e, TransferState.REJECTED, reason_code=rejection[0], detail=rejection[1])
        transfer_in = replace(instruction, creditor=normalised(instruction.creditor))
        with self._lock:
            self._attempts(e2e)
            if self._script.take(e2e, Fault.LOST_BEFORE_PROCESSING):
                raise OutcomeUnknown(f"fake: no answer for {e2e}", key=e2e)
            existing = self._transfers.get(e2e)
            if existing is not None:
                if _transfer_fingerprint(existing.instruction) != _transfer_fingerprint(transfer_in):
                    raise InstructionConflict(f"EndToEndId {e2e} was already used for another transfer", key=e2e)
                existing.requests += 1
                receipt = TransferReceipt(e2e, existing.state, reason_code=self._reason(existing), replayed=True)
            else:
                transfer = self._accept(transfer_in)
                receipt = TransferReceipt(e2e, transfer.state, reason_code=transfer.reason_code)
            if self._script.take(e2e, Fault.RESPONSE_LOST):
                raise OutcomeUnknown(f"fake: response lost for {e2e}", key=e2e)
            return receipt

    def _attempts(self, key: str) -> None:
        """Emulate the adapter's bounded retry: fail only when every attempt is unavailable."""
        for _ in range(ADAPTER_ATTEMPTS_MAX):
            if self._available and not self._script.take(key, Fault.UNAVAILABLE):
                return
        raise RailUnavailable(f"fake: bank unavailable for {key}", key=key)

    def _accept(self, instruction: CreditTransfer) -> _Transfer:
        e2e = instruction.end_to_end_id
        transfer = _Transfer(instruction, TransferState.ACCEPTED, accepted_at=self._clock.now())
        closed_reason = self._closed_accounts.get(instruction.creditor.iban)
        if closed_reason is not None:
            transfer.state, transfer.reason_code = TransferState.REJECTED, closed_reason
        else:
            transfer.executions += 1
            transfer.fail_at_settlement = self._script.take(e2e, Fault.FAIL_AT_SETTLEMENT)
        self._transfers[e2e] = transfer
        return transfer

    @staticmethod
    def _reason(transfer: _Transfer) -> str | None:
        return transfer.return_reason if transfer.state is TransferState.RETURNED else transfer.reason_code

    def transfer_status(self, end_to_end_id: str) -> TransferStatus:
        with self._lock:
            if not self._available:
                raise RailUnavailable("fake: bank unavailable", key=end_to_end_id)
            transfer = self._transfers.get(end_to_end_id)
            if transfer is None:
                return TransferStatus(end_to_end_id, TransferState.UNKNOWN)
            return TransferStatus(
                end_to_end_id, transfer.state, amount=transfer.instruction.amount, reason_code=self._reason(transfer)
            )

    def parse_notification(self, body: bytes) -> list[BankEvent]:
        payload = _load(body, "bank")
        try:
            return [
                BankEvent(
                    kind=BankEventKind(raw["kind"]),
                    end_to_end_id=str(raw["end_to_end_id"]),
                    amount=_money_from(raw.get("amount")),
                    reason_code=raw.get("reason_code"),
                    booked_on=date.fromisoformat(raw["booked_on"]) if raw.get("booked_on") else None,
                    entry_reference=raw.get("entry_reference"),
                    message_id=payload.get("message_id"),
                )
                for raw in payload["events"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise RailMessageUnreadable("unreadable fake bank notification") from exc

    def statement(self, on: date) -> Statement:
        with self._lock:
            if not self._available:
                raise RailUnavailable("fake: bank unavailable")
            return self._statement(on)

    def statement_body(self, on: date) -> bytes:
        """The statement of `on` as the fake's own document, for `parse_statement`."""
        statement = self.statement(on)
        return _dumps(
            {
                "fake": "bank_statement",
                "statement_id": statement.statement_id,
                "accounts": [
                    {
                        "account_iban": a.account_iban,
                        "currency": a.currency,
                        "opening": a.opening_balance.amount_minor,
                        "entries": [
                            {
                                "entry_reference": e.entry_reference,
                                "amount": _money_json(e.amount),
                                "direction": str(e.direction),
                                "booked_on": e.booked_on.isoformat(),
                                "end_to_end_id": e.end_to_end_id,
                                "return_reason": e.return_reason,
                            }
                            for e in a.entries
                        ],
                    }
                    for a in statement.accounts
                ],
            }
        )

    def parse_statement(self, body: bytes) -> Statement:
        payload = _load(body, "bank_statement")
        try:
            accounts = []
            for raw in payload["accounts"]:
                entries = tuple(
                    StatementEntry(
                        entry_reference=e["entry_reference"],
                        amount=_money_from(e["amount"]) or Money(0, raw["currency"]),
                        direction=EntryDirection(e["direction"]),
                        booked_on=date.fromisoformat(e["booked_on"]),
                        end_to_end_id=e.get("end_to_end_id"),
                        return_reason=e.get("return_reason"),
                    )
                    for e in raw["entries"]
                )
                accounts.append(_account(raw["account_iban"], raw["currency"], int(raw["opening"]), entries))
            return Statement(statement_id=str(payload["statement_id"]), accounts=tuple(accounts))
        except (KeyError, TypeError, ValueError, InvalidMoney) as exc:
            raise RailMessageUnreadable("unreadable fake statement") from exc

    # -- internals ----------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-FAKE-{self._seq}"

    def _notification(self, kind: BankEventKind, transfer: _Transfer, at: datetime) -> bytes:
        entry_reference = (
            transfer.return_entry_reference if kind is BankEventKind.RETURNED else transfer.entry_reference
        )
        event = {
            "kind": str(kind),
            "end_to_end_id": transfer.instruction.end_to_end_id,
            "amount": _money_json(transfer.instruction.amount),
            "reason_code": transfer.return_reason if kind is BankEventKind.RETURNED else transfer.reason_code,
            "booked_on": None if kind is BankEventKind.REJECTED else at.astimezone(UTC).date().isoformat(),
            "entry_reference": entry_reference,
        }
        return _dumps({"fake": "bank", "message_id": self._next_id("MSG"), "events": [event]})

    def _entries(self) -> list[tuple[datetime, StatementEntry]]:
        found: list[tuple[datetime, StatementEntry]] = []
        for t in self._transfers.values():
            if t.booked_at is not None and t.entry_reference is not None:
                found.append((t.booked_at, self._entry(t, t.booked_at, t.entry_reference, EntryDirection.DEBIT)))
            if t.returned_at is not None and t.return_entry_reference is not None:
                found.append(
                    (t.returned_at, self._entry(t, t.returned_at, t.return_entry_reference, EntryDirection.CREDIT))
                )
        return sorted(found, key=lambda pair: (pair[0], pair[1].entry_reference))

    @staticmethod
    def _entry(t: _Transfer, at: datetime, reference: str, direction: EntryDirection) -> StatementEntry:
        return StatementEntry(
            entry_reference=reference,
            amount=t.instruction.amount,
            direction=direction,
            booked_on=at.astimezone(UTC).date(),
            end_to_end_id=t.instruction.end_to_end_id,
            return_reason=t.return_reason if direction is EntryDirection.CREDIT else None,
        )

    def _statement(self, on: date) -> Statement:
        opening: dict[str, int] = {}
        entries: dict[str, list[StatementEntry]] = {}
        for _, entry in self._entries():
            currency = entry.amount.currency
            signed = entry.amount.amount_minor * (1 if entry.direction is EntryDirection.CREDIT else -1)
            if entry.booked_on < on:
                opening[currency] = opening.get(currency, 0) + signed
                entries.setdefault(currency, [])
            elif entry.booked_on == on:
                opening.setdefault(currency, 0)
                entries.setdefault(currency, []).append(entry)
        accounts = tuple(
            _account(self._account_iban, currency, opening[currency], tuple(entries[currency]))
            for currency in sorted(entries)
        )
        return Statement(statement_id=f"STM-FAKE-{on.isoformat()}", accounts=accounts)


def _account(iban: str, currency: str, opening_minor: int, entries: tuple[StatementEntry, ...]) -> AccountStatement:
    moved = sum(e.amount.amount_minor * (1 if e.direction is EntryDirection.CREDIT else -1) for e in entries)
    return AccountStatement(
        account_iban=iban,
        currency=currency,
        opening_balance=Money(opening_minor, currency),
        closing_balance=Money(opening_minor + moved, currency),
        entries=entries,
    )


# --- card ------------------------------------------------------------------------------------


@dataclass
class _Refund:
    instruction: CardRefund
    state: RefundState
    created_at: datetime
    acquirer_reference: str
    failure_reason: str | None = None
    fail_at_settlement: bool = False
    settled_at: datetime | None = None
    executions: int = 1
    requests: int = 1


@dataclass
class _Chargeback:
    id: str
    payment_reference: str
    amount: Money
    reason_code: str
    created_at: datetime
    refund_id: str | None = None


@dataclass
class _CardBook:
    refunds: dict[str, _Refund] = field(default_factory=dict)
    chargebacks: list[_Chargeback] = field(default_factory=list)


class FakeCardRail:
    """A `CardRail` in memory; `tick()` settles due refunds and returns webhook bodies."""

    def __init__(self, clock: Clock, *, settle_delay: timedelta = timedelta(seconds=30)) -> None:
        self._clock = clock
        self._settle_delay = settle_delay
        self._book = _CardBook()
        self._script = _Script()
        self._available = True
        self._seq = 0
        self._lock = threading.Lock()

    def script(self, key: str, fault: Fault, times: int = 1) -> None:
        """Make the next `times` receipts of refund `key` misbehave (see the module docstring)."""
        with self._lock:
            self._script.add(key, fault, times)

    def set_available(self, available: bool) -> None:
        """While unavailable every call raises RailUnavailable (after the emulated retries)."""
        with self._lock:
            self._available = available

    def executions(self, refund_id: str) -> int:
        """How many times the refund was taken for execution (the at-most-once check)."""
        with self._lock:
            refund = self._book.refunds.get(refund_id)
            return 0 if refund is None else refund.executions

    def refunded(self, currency: str) -> Money:
        """Succeeded refunds in `currency`: what the ledger must agree with (invariant 2)."""
        with self._lock:
            return Money(
                sum(
                    r.instruction.amount.amount_minor
                    for r in self._book.refunds.values()
                    if r.state is RefundState.SUCCEEDED and r.instruction.amount.currency == currency
                ),
                currency,
            )

    def tick(self) -> list[bytes]:
        """Settle every refund that is due on the clock; return one webhook body each."""
        with self._lock:
            now = self._clock.now()
            bodies: list[bytes] = []
            for refund in self._book.refunds.values():
                due = refund.created_at + self._settle_delay
                if refund.state is not RefundState.PENDING or due > now:
                    continue
                if refund.fail_at_settlement:
                    refund.state, refund.failure_reason = RefundState.FAILED, CARD_DECLINE_REASON
                    bodies.append(self._refund_event(CardEventKind.REFUND_FAILED, refund))
                    continue
                refund.state, refund.settled_at = RefundState.SUCCEEDED, due
                bodies.append(self._refund_event(CardEventKind.REFUND_SUCCEEDED, refund))
            return bodies

    def raise_chargeback(
        self, payment_reference: str, amount: Money, reason_code: str = "10.4", refund_id: str | None = None
    ) -> list[bytes]:
        """The acquirer raises a chargeback now; returns its webhook body."""
        with self._lock:
            chargeback = _Chargeback(
                self._next_id("cb"), payment_reference, amount, reason_code, self._clock.now(), refund_id
            )
            self._book.chargebacks.append(chargeback)
            return [
                self._event(
                    CardEventKind.CHARGEBACK_CREATED,
                    chargeback.id,
                    payment_reference,
                    amount,
                    reason_code,
                    refund_id,
                )
            ]

    def refund(self, instruction: CardRefund) -> RefundReceipt:
        """Same contract as the real adapter: see `escrow.ports.CardRail`."""
        key = instruction.refund_id
        with self._lock:
            for _ in range(ADAPTER_ATTEMPTS_MAX):
                if self._available and not self._script.take(key, Fault.UNAVAILABLE):
                    break
            else:
                raise RailUnavailable(f"fake: acquirer unavailable for {key}", key=key)
            if self._script.take(key, Fault.LOST_BEFORE_PROCESSING):
                raise OutcomeUnknown(f"fake: no answer for {key}", key=key)
            existing = self._book.refunds.get(key)
            if existing is not None:
                if existing.instruction != instruction:
                    raise InstructionConflict(f"refund {key} was already used for another refund", key=key)
                existing.requests += 1
                refund, replayed = existing, True
            else:
                refund = _Refund(
                    instruction,
                    RefundState.PENDING,
                    created_at=self._clock.now(),
                    acquirer_reference=self._next_id("acq_rf"),
                    fail_at_settlement=self._script.take(key, Fault.FAIL_AT_SETTLEMENT),
                )
                self._book.refunds[key] = refund
                replayed = False
            if self._script.take(key, Fault.RESPONSE_LOST):
                raise OutcomeUnknown(f"fake: response lost for {key}", key=key)
            return RefundReceipt(key, refund.state, refund.acquirer_reference, refund.failure_reason, replayed)

    def refund_status(self, refund_id: str) -> RefundStatus:
        with self._lock:
            if not self._available:
                raise RailUnavailable("fake: acquirer unavailable", key=refund_id)
            refund = self._book.refunds.get(refund_id)
            if refund is None:
                return RefundStatus(refund_id, RefundState.UNKNOWN)
            return RefundStatus(refund_id, refund.state, refund.instruction.amount, refund.failure_reason)

    def parse_webhook(self, body: bytes) -> list[CardEvent]:
        payload = _load(body, "card")
        try:
            kind = CardEventKind(payload["type"])
        except (KeyError, ValueError):
            return []
        amount = _money_from(payload.get("amount"))
        if amount is None:
            raise RailMessageUnreadable("fake card event without amount")
        try:
            return [
                CardEvent(
                    kind=kind,
                    event_id=str(payload["id"]),
                    object_id=str(payload["object_id"]),
                    payment_reference=str(payload["payment_reference"]),
                    amount=amount,
                    reason_code=payload.get("reason_code"),
                    refund_id=payload.get("refund_id"),
                )
            ]
        except KeyError as exc:
            raise RailMessageUnreadable("unreadable fake card event") from exc

    def settlement_report(self, on: date) -> SettlementReport:
        with self._lock:
            if not self._available:
                raise RailUnavailable("fake: acquirer unavailable")
            items = [
                (
                    r.settled_at,
                    SettlementItem(
                        SettlementItemKind.REFUND,
                        r.instruction.refund_id,
                        r.instruction.payment_reference,
                        r.instruction.amount,
                    ),
                )
                for r in self._book.refunds.values()
                if r.settled_at is not None and r.settled_at.astimezone(UTC).date() == on
            ]
            items += [
                (c.created_at, SettlementItem(SettlementItemKind.CHARGEBACK, c.id, c.payment_reference, c.amount))
                for c in self._book.chargebacks
                if c.created_at.astimezone(UTC).date() == on
            ]
            items.sort(key=lambda pair: (pair[0], pair[1].kind, pair[1].object_id))
            return SettlementReport(on=on, items=tuple(item for _, item in items))

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}_fake_{self._seq}"

    def _refund_event(self, kind: CardEventKind, refund: _Refund) -> bytes:
        r = refund.instruction
        return self._event(kind, r.refund_id, r.payment_reference, r.amount, refund.failure_reason, r.refund_id)

    def _event(
        self,
        kind: CardEventKind,
        object_id: str,
        payment_reference: str,
        amount: Money,
        reason_code: str | None,
        refund_id: str | None,
    ) -> bytes:
        return _dumps(
            {
                "fake": "card",
                "id": self._next_id("evt"),
                "type": str(kind),
                "object_id": object_id,
                "payment_reference": payment_reference,
                "amount": _money_json(amount),
                "reason_code": reason_code,
                "refund_id": refund_id,
            }
        )
