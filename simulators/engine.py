"""The simulated bank and card acquirer: decisions and books, with no HTTP in sight.

`Simulator` owns the state, the clock, the fault rules and the callback queue. Each public
method is one API operation and returns a `Reply` (status, body, headers) that the FastAPI
layer only copies onto the wire, so tests can also drive the engine directly.

Concurrency: one lock guards the state; every operation decides and records under it, so
two concurrent requests with the same EndToEndId or Idempotency-Key can never both execute.
Sleeps (slow responses, timeouts) and callback deliveries happen outside the lock so a
sleeping request does not stall the others; ticks are serialised by a second lock so a
callback is never handed to the sender twice by two overlapping ticks.

Money is moved ("executed") in exactly one place per rail (`_accept_transfer`,
`_create_refund`), each incrementing `executions`: the books at `/control/ledger` expose that
counter so a test can prove an instruction was executed once, whatever the retries.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException

from simulators.clock import Clock, SimClock, wall_now
from simulators.faults import (
    POST_PROCESSING_FAULTS,
    PRE_PROCESSING_FAULTS,
    REJECTED_IBAN_SUFFIX,
    FaultBook,
    Magic,
    amount_magic,
)
from simulators.iso20022 import (
    AccountStatement,
    CamtEntry,
    CreditTransferTx,
    Pain001,
    TxStatus,
    WireError,
    parse_pain001,
    render_camt053,
    render_camt054,
    render_pain002,
)
from simulators.money import (
    AMOUNT_MINOR_MAX,
    MoneyError,
    check_amount_minor,
    currency_exponent,
    decimal_str_to_minor,
)
from simulators.state import (
    Callback,
    Chargeback,
    IdempotencyRecord,
    Refund,
    SimState,
    Transfer,
    load_state,
    save_state,
)
from simulators.webhooks import CallbackRequest, CallbackSender, HttpxCallbackSender, signed_headers

log = structlog.get_logger("simulators")

BODY_BYTES_MAX = 1_048_576
IDEMPOTENCY_KEY_CHARS_MAX = 255
STATEMENT_DAYS_MAX = 31
CALLBACKS_PER_TICK_MAX = 1000
CALLBACK_RETRY_MAX_S = 3600.0
XML = "application/xml"
JSON = "application/json"
PROBLEM = "application/problem+json"

# ISO 20022 external status reason codes used by the bank.
REASON_CODES = {
    "unknown_currency": "AM03",  # NotAllowedCurrency
    "invalid_amount": "AM12",  # InvalidAmount
    "zero_amount": "AM01",  # ZeroAmount
    "amount_too_large": "AM02",  # NotAllowedAmount
}


@dataclass
class SimulatorConfig:
    """How a simulator instance behaves; every field has a test-friendly meaning.

    Durations are seconds on the simulator's `clock` except `timeout_s` and `slow_s`, which
    are real sleeps (through `sleep`) because they exist to exceed a client's real timeout.
    """

    clock: Clock = field(default_factory=SimClock.wall)
    bank_webhook_url: str | None = None
    card_webhook_url: str | None = None
    bank_webhook_secret: str | None = None
    card_webhook_secret: str | None = None
    settle_delay_s: float = 60.0
    return_delay_s: float = 300.0
    card_settle_delay_s: float = 60.0
    chargeback_delay_s: float = 300.0
    callback_sender: CallbackSender | None = None
    signing_clock: Callable[[], datetime] = wall_now
    timeout_s: float = 30.0
    slow_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    seed: int = 0
    magic_values: bool = True
    state_path: Path | None = None
    callback_attempts_max: int = 8
    callback_retry_base_s: float = 5.0
    tick_interval_s: float | None = None

    @classmethod
    def with_webhook_base(cls, base_url: str, secret: str, **overrides: Any) -> SimulatorConfig:
        """Bank callbacks to `{base_url}/bank`, card callbacks to `{base_url}/card`."""
        base = base_url.rstrip("/")
        return cls(
            bank_webhook_url=f"{base}/bank",
            card_webhook_url=f"{base}/card",
            bank_webhook_secret=secret,
            card_webhook_secret=secret,
            **overrides,
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """What an operation answers; the HTTP layer writes it as is."""

    status_code: int
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False

    def json(self) -> Any:
        """The body parsed as JSON (for tests and the control API)."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did."""

    settled: int
    returned: int
    chargebacks: int
    callbacks_delivered: int
    callbacks_failed: int


def problem(status: int, code: str, detail: str, *, errors: list[dict[str, str]] | None = None) -> Reply:
    """An RFC 9457 problem reply with a stable `code`."""
    body: dict[str, Any] = {
        "type": f"urn:simulator:problem:{code}",
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    return Reply(status, _dumps(body), PROBLEM)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(_dumps(value)).hexdigest()


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _money(amount_minor: int, currency: str) -> dict[str, Any]:
    return {"amount": amount_minor, "currency": currency}


class MoneyIn(BaseModel):
    """A money object in a JSON request: integer minor units and an ISO 4217 code."""

    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: str = Field(min_length=3, max_length=3)


class RefundRequest(BaseModel):
    """Body of `POST /card/v1/refunds`."""

    model_config = ConfigDict(extra="forbid")

    payment_reference: str = Field(min_length=1, max_length=140)
    amount: MoneyIn
    refund_id: str = Field(min_length=1, max_length=140)


def _validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]} for err in exc.errors()]


class Simulator:
    """A bank and a card acquirer sharing one clock, one fault book and one callback queue."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.clock = config.clock
        self.faults = FaultBook(config.seed)
        self._lock = threading.RLock()
        self._tick_lock = threading.Lock()
        self._owned_sender: HttpxCallbackSender | None = None
        if config.callback_sender is not None:
            self._sender: CallbackSender = config.callback_sender
        else:
            self._owned_sender = HttpxCallbackSender()
            self._sender = self._owned_sender
        self._state = SimState()
        if config.state_path is not None:
            self._state = load_state(config.state_path)
            if self._state.clock is not None and isinstance(self.clock, SimClock):
                self.clock.restore(self._state.clock)

    def close(self) -> None:
        """Release the default HTTP sender, if the simulator created one."""
        if self._owned_sender is not None:
            self._owned_sender.close()

    # --- shared plumbing -----------------------------------------------------------------

    def _save(self) -> None:
        """Persist the state when a state file is configured (called under the lock)."""
        if self.config.state_path is None:
            return
        if isinstance(self.clock, SimClock):
            self._state.clock = self.clock.snapshot()
        save_state(self._state, self.config.state_path)

    def _magic(self, amount_minor: int | None) -> Magic | None:
        if not self.config.magic_values or amount_minor is None:
            return None
        return amount_magic(amount_minor)

    def _with_faults(
        self,
        operation: str,
        keys: tuple[str, ...],
        execute: Callable[[], tuple[Reply, Magic | None]],
    ) -> Reply:
        """Run `execute` between the fault rules that fire before and after processing.

        `execute` returns its reply and, for a first receipt, the magic behaviour of the
        instruction; a rule from `/control/faults` wins over a magic value.
        """
        rule = self.faults.take(operation, keys, PRE_PROCESSING_FAULTS)
        if rule is not None:
            log.info("fault_injected", operation=operation, fault=rule.fault, phase="before")
            if rule.fault == "error_5xx":
                return problem(rule.status_code, "simulated_fault", "injected server error")
            if rule.fault == "timeout":
                self.config.sleep(rule.delay_s if rule.delay_s is not None else self.config.timeout_s)
                return problem(504, "simulated_timeout", "injected timeout; nothing was executed")
            self.config.sleep(rule.delay_s if rule.delay_s is not None else self.config.slow_s)
        reply, magic = execute()
        post = self.faults.take(operation, keys, POST_PROCESSING_FAULTS)
        fault: str | None = post.fault if post is not None else None
        delay_s = post.delay_s if post is not None and post.delay_s is not None else None
        if fault is None and magic is Magic.RESPONSE_LOST:
            fault = "response_lost"
        elif fault is None and magic is Magic.TIMEOUT_AFTER_BOOKING:
            fault = "timeout_after_booking"
        elif fault is None and magic is Magic.SLOW:
            self.config.sleep(self.config.slow_s)
        if fault is not None:
            log.info("fault_injected", operation=operation, fault=fault, phase="after")
        if fault == "response_lost":
            return problem(504, "simulated_response_lost", "executed, but the response was lost")
        if fault == "timeout_after_booking":
            self.config.sleep(delay_s if delay_s is not None else self.config.timeout_s)
            return problem(504, "simulated_timeout", "executed, then timed out")
        if fault == "drop_connection":
            return replace(reply, drop_connection=True)
        return reply

    def _queue_callback(
        self,
        *,
        rail: str,
        event_type: str,
        object_id: str,
        content_type: str,
        body: bytes,
        at: datetime,
        duplicate: bool,
        webhook_id: str,
    ) -> None:
        self._state.callbacks.append(
            Callback(
                webhook_id=webhook_id,
                rail="bank" if rail == "bank" else "card",
                event_type=event_type,
                object_id=object_id,
                content_type=content_type,
                body=body.decode("utf-8"),
                seq=len(self._state.callbacks) + 1,
                created_at=at,
                next_attempt_at=at,
                duplicate=duplicate,
            )
        )

    # --- bank: credit transfers ------------------------------------------------------------

    def submit_credit_transfers(self, body: bytes) -> Reply:
        """`POST /bank/v1/credit-transfers`: accept a pain.001, answer a pain.002.

        400 for a document that cannot be read, 409 when an EndToEndId was already used with
        other content (nothing of the message is applied then), otherwise 200 with one
        status per transaction: ACSP (accepted), ACSC (already settled, on a replay) or
        RJCT with a reason code.
        """
        if len(body) > BODY_BYTES_MAX:
            return problem(413, "body_too_large", f"at most {BODY_BYTES_MAX} bytes")
        try:
            message = parse_pain001(body)
        except WireError as exc:
            return problem(400, exc.code, str(exc))
        keys = tuple(tx.end_to_end_id for tx in message.transactions)
        return self._with_faults("bank.credit_transfer", keys, lambda: self._execute_pain001(message))

    def _execute_pain001(self, message: Pain001) -> tuple[Reply, Magic | None]:
        with self._lock:
            now = self.clock.now()
            prints = {tx.end_to_end_id: self._transfer_fingerprint(tx) for tx in message.transactions}
            for tx in message.transactions:
                existing = self._state.transfers.get(tx.end_to_end_id)
                if existing is not None and existing.fingerprint != prints[tx.end_to_end_id]:
                    return (
                        problem(
                            409,
                            "end_to_end_id_conflict",
                            f"EndToEndId {tx.end_to_end_id} was already used for another transfer",
                        ),
                        None,
                    )
            new = [tx for tx in message.transactions if tx.end_to_end_id not in self._state.transfers]
            transient = [
                tx.end_to_end_id
                for tx in new
                if self._magic(self._readable_minor(tx)) is Magic.TRANSIENT_5XX
                and f"bank:{tx.end_to_end_id}" not in self._state.transient_seen
            ]
            if transient:
                self._state.transient_seen.update(f"bank:{e2e}" for e2e in transient)
                self._save()
                return problem(503, "simulated_fault", "transient failure, nothing executed"), None
            post_magic: Magic | None = None
            for tx in message.transactions:
                existing = self._state.transfers.get(tx.end_to_end_id)
                if existing is not None:
                    existing.requests += 1
                    continue
                transfer = self._accept_transfer(tx, message, prints[tx.end_to_end_id], now)
                if transfer.status == "ACSP" and transfer.magic in (
                    Magic.TIMEOUT_AFTER_BOOKING,
                    Magic.RESPONSE_LOST,
                    Magic.SLOW,
                ):
                    post_magic = post_magic or Magic(transfer.magic)
            statuses = [self._tx_status(self._state.transfers[tx.end_to_end_id]) for tx in message.transactions]
            reply_body = render_pain002(
                msg_id=self._state.next_id("STS"),
                created_at=now,
                original_msg_id=message.msg_id,
                original_schema=message.schema,
                transactions=statuses,
            )
            self._save()
        headers = {"idempotent-replayed": "true"} if not new else {}
        return Reply(200, reply_body, XML, headers), post_magic

    @staticmethod
    def _transfer_fingerprint(tx: CreditTransferTx) -> str:
        """Hash of what makes a transfer *the same transfer*.

        Message ids, PmtInfIds, creation times and the requested execution date are left
        out on purpose: a client retrying after an unknown outcome rebuilds the file, and
        sepaxml gives every file fresh random ids; only the money and the parties count.
        """
        return _fingerprint(
            {
                "amount": _normalised_amount(tx.amount_text),
                "currency": tx.currency,
                "creditor_iban": tx.creditor_iban.replace(" ", "").upper(),
                "creditor_bic": (tx.creditor_bic or "").upper(),
                "creditor_name": tx.creditor_name,
                "debtor_iban": tx.debtor_iban.replace(" ", "").upper(),
                "remittance": tx.remittance,
            }
        )

    @staticmethod
    def _readable_minor(tx: CreditTransferTx) -> int | None:
        try:
            return decimal_str_to_minor(tx.amount_text, tx.currency)
        except MoneyError:
            return None

    def _accept_transfer(self, tx: CreditTransferTx, message: Pain001, fingerprint: str, now: datetime) -> Transfer:
        """Validate a new transaction and record it as accepted (executed) or rejected."""
        transfer = Transfer(
            end_to_end_id=tx.end_to_end_id,
            fingerprint=fingerprint,
            status="RJCT",
            amount_text=tx.amount_text,
            amount_minor=None,
            currency=tx.currency,
            creditor_name=tx.creditor_name,
            creditor_iban=tx.creditor_iban,
            creditor_bic=tx.creditor_bic,
            remittance=tx.remittance,
            debtor_name=tx.debtor_name,
            debtor_iban=tx.debtor_iban,
            debtor_bic=tx.debtor_bic,
            msg_id=message.msg_id,
            pmt_inf_id=tx.pmt_inf_id,
            schema_name=message.schema,
            received_at=now,
        )
        self._state.transfers[tx.end_to_end_id] = transfer
        reason = self._rejection(tx, transfer)
        if reason is not None:
            transfer.reason_code, transfer.reason_info = reason
            log.info("transfer_rejected", end_to_end_id=tx.end_to_end_id, reason=reason[0])
            return transfer
        transfer.status = "ACSP"
        transfer.magic = self._magic(transfer.amount_minor)
        transfer.settle_at = now + timedelta(seconds=self.config.settle_delay_s)
        transfer.executions += 1  # the one place where the bank takes a transfer for execution
        log.info("transfer_accepted", end_to_end_id=tx.end_to_end_id)
        return transfer

    def _rejection(self, tx: CreditTransferTx, transfer: Transfer) -> tuple[str, str] | None:
        """Why a transaction is rejected (ISO reason code, text), or None to accept it."""
        try:
            currency_exponent(tx.currency)
            amount_minor = decimal_str_to_minor(tx.amount_text, tx.currency)
            check_amount_minor(amount_minor)
        except MoneyError as exc:
            return REASON_CODES[exc.code], str(exc)
        transfer.amount_minor = amount_minor
        try:
            IBAN(tx.debtor_iban)
        except SchwiftyException as exc:
            return "AC02", f"invalid debtor IBAN: {exc}"
        try:
            creditor = IBAN(tx.creditor_iban)
        except SchwiftyException as exc:
            return "AC01", f"invalid creditor IBAN: {exc}"
        for bic in (tx.debtor_bic, tx.creditor_bic):
            if bic is not None:
                try:
                    BIC(bic)
                except SchwiftyException as exc:
                    return "RC01", f"invalid BIC: {exc}"
        if self.config.magic_values and creditor.compact.endswith(REJECTED_IBAN_SUFFIX):
            return "AC04", "creditor account closed"
        return None

    @staticmethod
    def _tx_status(transfer: Transfer) -> TxStatus:
        reason, info = transfer.reason_code, transfer.reason_info
        if transfer.returned_at is not None:
            reason, info = transfer.return_reason, "RETURNED"
        return TxStatus(
            end_to_end_id=transfer.end_to_end_id,
            pmt_inf_id=transfer.pmt_inf_id,
            status=transfer.status,
            amount_text=transfer.amount_text,
            currency=transfer.currency,
            reason_code=reason,
            additional_info=info,
        )

    def transfer_status(self, end_to_end_id: str) -> Reply:
        """`GET /bank/v1/credit-transfers/{id}`: a pain.002 of one transfer, or 404."""

        def execute() -> tuple[Reply, Magic | None]:
            with self._lock:
                transfer = self._state.transfers.get(end_to_end_id)
                if transfer is None:
                    return problem(404, "transfer_not_found", "no transfer with this EndToEndId"), None
                body = render_pain002(
                    msg_id=self._state.next_id("STS"),
                    created_at=self.clock.now(),
                    original_msg_id=transfer.msg_id,
                    original_schema=transfer.schema_name,
                    transactions=[self._tx_status(transfer)],
                )
                headers = {"x-simulator-returned": "true"} if transfer.returned_at else {}
                return Reply(200, body, XML, headers), None

        return self._with_faults("bank.transfer_status", (end_to_end_id,), execute)

    def return_transfer(self, end_to_end_id: str, reason_code: str, info: str | None) -> Reply:
        """Control: the creditor bank returns a settled transfer now (camt.054 callback)."""
        with self._lock:
            transfer = self._state.transfers.get(end_to_end_id)
            if transfer is None:
                return problem(404, "transfer_not_found", "no transfer with this EndToEndId")
            if transfer.status != "ACSC" or transfer.returned_at is not None:
                return problem(409, "transfer_not_returnable", "only a settled, unreturned transfer returns")
            self._return(transfer, self.clock.now(), reason_code, info)
            self._save()
            return Reply(200, _dumps(self._transfer_view(transfer)), JSON)

    def _settle_transfer(self, transfer: Transfer) -> int:
        """Settle a due ACSP transfer at its scheduled time; returns returns performed."""
        at = transfer.settle_at or self.clock.now()
        duplicate = transfer.magic == Magic.DUPLICATE_CALLBACKS
        if transfer.magic == Magic.FAIL_AT_SETTLEMENT:
            transfer.status = "RJCT"
            transfer.reason_code, transfer.reason_info = "AM04", "insufficient funds"
            webhook_id = self._state.next_id("msg")
            body = render_pain002(
                msg_id=webhook_id,
                created_at=at,
                original_msg_id=transfer.msg_id,
                original_schema=transfer.schema_name,
                transactions=[self._tx_status(transfer)],
            )
            self._queue_callback(
                rail="bank",
                event_type="bank.transfer.rejected",
                object_id=transfer.end_to_end_id,
                content_type=XML,
                body=body,
                at=at,
                duplicate=duplicate,
                webhook_id=webhook_id,
            )
            log.info("transfer_rejected", end_to_end_id=transfer.end_to_end_id, reason="AM04")
            return 0
        transfer.status = "ACSC"
        transfer.booked_at = at
        transfer.entry_ref = self._state.next_id("NTRY")
        log.info("transfer_booked", end_to_end_id=transfer.end_to_end_id)
        if transfer.magic == Magic.OUT_OF_ORDER:
            # The return is notified first, then the booking it reverses.
            self._return(transfer, at, "AC04", "account closed")
            self._queue_booking_callback(transfer, at, duplicate)
            return 1
        self._queue_booking_callback(transfer, at, duplicate)
        if transfer.magic == Magic.RETURN:
            transfer.return_at = at + timedelta(seconds=self.config.return_delay_s)
        return 0

    def _camt_entry(self, transfer: Transfer, *, returned: bool) -> CamtEntry:
        if transfer.amount_minor is None or transfer.booked_at is None:
            raise RuntimeError("only booked transfers have entries")
        at = transfer.returned_at if returned and transfer.returned_at else transfer.booked_at
        return CamtEntry(
            entry_ref=(transfer.return_entry_ref if returned else transfer.entry_ref) or "",
            amount_minor=transfer.amount_minor,
            currency=transfer.currency,
            credit_debit="CRDT" if returned else "DBIT",
            booked_at=at,
            sub_family="RRTN" if returned else "ESCT",
            end_to_end_id=transfer.end_to_end_id,
            msg_id=transfer.msg_id,
            pmt_inf_id=transfer.pmt_inf_id,
            creditor_name=transfer.creditor_name,
            creditor_iban=transfer.creditor_iban,
            remittance=transfer.remittance,
            return_reason=transfer.return_reason if returned else None,
            return_info=transfer.return_info if returned else None,
        )

    def _queue_booking_callback(self, transfer: Transfer, at: datetime, duplicate: bool) -> None:
        webhook_id = self._state.next_id("msg")
        body = render_camt054(
            msg_id=webhook_id,
            created_at=at,
            account_iban=transfer.debtor_iban,
            entries=[self._camt_entry(transfer, returned=False)],
        )
        self._queue_callback(
            rail="bank",
            event_type="bank.transfer.booked",
            object_id=transfer.end_to_end_id,
            content_type=XML,
            body=body,
            at=at,
            duplicate=duplicate,
            webhook_id=webhook_id,
        )

    def _return(self, transfer: Transfer, at: datetime, reason: str, info: str | None) -> None:
        transfer.returned_at = at
        transfer.return_reason = reason
        transfer.return_info = info
        transfer.return_entry_ref = self._state.next_id("NTRY")
        webhook_id = self._state.next_id("msg")
        body = render_camt054(
            msg_id=webhook_id,
            created_at=at,
            account_iban=transfer.debtor_iban,
            entries=[self._camt_entry(transfer, returned=True)],
        )
        self._queue_callback(
            rail="bank",
            event_type="bank.transfer.returned",
            object_id=transfer.end_to_end_id,
            content_type=XML,
            body=body,
            at=at,
            duplicate=transfer.magic == Magic.DUPLICATE_CALLBACKS,
            webhook_id=webhook_id,
        )
        log.info("transfer_returned", end_to_end_id=transfer.end_to_end_id, reason=reason)

    def statement(self, date_from: date, date_to: date, account: str | None = None) -> Reply:
        """`GET /bank/v1/statements`: a camt.053 of every entry booked in [from, to].

        One Stmt per debtor account and currency; the opening balance is the sum of all
        earlier entries (the simulated accounts start at zero), so a debit-only account
        shows a DBIT balance.
        """
        if date_to < date_from:
            return problem(422, "invalid_date_range", "`to` is before `from`")
        if (date_to - date_from).days + 1 > STATEMENT_DAYS_MAX:
            return problem(422, "date_range_too_long", f"at most {STATEMENT_DAYS_MAX} days")

        def execute() -> tuple[Reply, Magic | None]:
            start = datetime(date_from.year, date_from.month, date_from.day, tzinfo=UTC)
            end = datetime(date_to.year, date_to.month, date_to.day, tzinfo=UTC) + timedelta(days=1)
            with self._lock:
                groups: dict[tuple[str, str], tuple[int, list[CamtEntry]]] = {}
                for entry in self._all_entries():
                    transfer = self._state.transfers[entry.end_to_end_id]
                    if account is not None and transfer.debtor_iban != account:
                        continue
                    key = (transfer.debtor_iban, entry.currency)
                    opening, entries = groups.get(key, (0, []))
                    if entry.booked_at < start:
                        signed = entry.amount_minor if entry.credit_debit == "CRDT" else -entry.amount_minor
                        groups[key] = (opening + signed, entries)
                    elif entry.booked_at < end:
                        entries.append(entry)
                        groups[key] = (opening, entries)
                statements = [
                    AccountStatement(
                        statement_id=f"STM-{iban}-{currency}-{date_from}-{date_to}",
                        sequence=date_to.toordinal(),
                        account_iban=iban,
                        currency=currency,
                        from_at=start,
                        to_at=end - timedelta(milliseconds=1),
                        opening_minor=opening,
                        entries=tuple(sorted(entries, key=lambda e: (e.booked_at, e.entry_ref))),
                    )
                    for (iban, currency), (opening, entries) in sorted(groups.items())
                ]
                body = render_camt053(
                    msg_id=self._state.next_id("STMT"),
                    created_at=self.clock.now(),
                    statements=statements,
                )
            return Reply(200, body, XML), None

        return self._with_faults("bank.statement", (), execute)

    def _all_entries(self) -> Iterable[CamtEntry]:
        for transfer in self._state.transfers.values():
            if transfer.booked_at is not None:
                yield self._camt_entry(transfer, returned=False)
            if transfer.returned_at is not None:
                yield self._camt_entry(transfer, returned=True)

    @staticmethod
    def _transfer_view(transfer: Transfer) -> dict[str, Any]:
        return {
            "end_to_end_id": transfer.end_to_end_id,
            "status": transfer.status,
            "returned": transfer.returned_at is not None,
            "amount": (_money(transfer.amount_minor, transfer.currency) if transfer.amount_minor is not None else None),
            "amount_text": transfer.amount_text,
            "debtor_iban": transfer.debtor_iban,
            "creditor_iban": transfer.creditor_iban,
            "reason_code": transfer.reason_code,
            "return_reason": transfer.return_reason,
            "received_at": _iso(transfer.received_at),
            "settle_at": _iso(transfer.settle_at),
            "booked_at": _iso(transfer.booked_at),
            "returned_at": _iso(transfer.returned_at),
            "requests": transfer.requests,
            "executions": transfer.executions,
        }

    # --- card acquirer -----------------------------------------------------------------------

    def create_refund(self, body: bytes, idempotency_key: str | None) -> Reply:
        """`POST /card/v1/refunds`: start a refund to the original card.

        201 with the refund (`pending`); the same Idempotency-Key and body replays the first
        response (`idempotent-replayed: true`); the same key with another body is 422
        `idempotency_key_reused`; a refund_id already used with another body is 409
        `refund_id_conflict`.
        """
        if not idempotency_key:
            return problem(400, "idempotency_key_missing", "the Idempotency-Key header is required")
        if len(idempotency_key) > IDEMPOTENCY_KEY_CHARS_MAX:
            return problem(400, "idempotency_key_too_long", "at most 255 characters")
        if len(body) > BODY_BYTES_MAX:
            return problem(413, "body_too_large", f"at most {BODY_BYTES_MAX} bytes")
        try:
            request = RefundRequest.model_validate_json(body)
            currency_exponent(request.amount.currency)
        except ValidationError as exc:
            return problem(422, "validation_error", "invalid refund", errors=_validation_errors(exc))
        except MoneyError as exc:
            return problem(
                422,
                "validation_error",
                str(exc),
                errors=[{"field": "amount.currency", "message": str(exc)}],
            )
        keys = (request.refund_id, request.payment_reference, idempotency_key)
        return self._with_faults("card.refund", keys, lambda: self._execute_refund(request, idempotency_key))

    def _execute_refund(self, request: RefundRequest, key: str) -> tuple[Reply, Magic | None]:
        fingerprint = _fingerprint(request.model_dump())
        with self._lock:
            record = self._state.idempotency.get(key)
            if record is not None:
                if record.fingerprint != fingerprint:
                    return (
                        problem(422, "idempotency_key_reused", "this key was used with another body"),
                        None,
                    )
                self._state.refunds[record.refund_id].requests += 1
                self._save()
                replay = Reply(record.status_code, record.body, JSON, {"idempotent-replayed": "true"})
                return replay, None
            existing = self._state.refunds.get(request.refund_id)
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    return problem(409, "refund_id_conflict", "refund_id used for another refund"), None
                existing.requests += 1
                existing.idempotency_keys.append(key)
                body = _dumps(self._refund_view(existing))
                self._state.idempotency[key] = IdempotencyRecord(
                    key=key,
                    fingerprint=fingerprint,
                    refund_id=existing.refund_id,
                    status_code=200,
                    body=body,
                )
                self._save()
                return Reply(200, body, JSON, {"idempotent-replayed": "true"}), None
            magic = self._magic(request.amount.amount)
            transient_key = f"card:{request.refund_id}"
            if magic is Magic.TRANSIENT_5XX and transient_key not in self._state.transient_seen:
                self._state.transient_seen.add(transient_key)
                self._save()
                return problem(503, "simulated_fault", "transient failure, nothing executed"), None
            refund = self._create_refund(request, fingerprint, key, magic)
            body = _dumps(self._refund_view(refund))
            self._state.idempotency[key] = IdempotencyRecord(
                key=key,
                fingerprint=fingerprint,
                refund_id=refund.refund_id,
                status_code=201,
                body=body,
            )
            self._save()
        return Reply(201, body, JSON), magic

    def _create_refund(self, request: RefundRequest, fingerprint: str, key: str, magic: Magic | None) -> Refund:
        now = self.clock.now()
        refund = Refund(
            refund_id=request.refund_id,
            acquirer_reference=self._state.next_id("acq_rf"),
            fingerprint=fingerprint,
            payment_reference=request.payment_reference,
            amount_minor=request.amount.amount,
            currency=request.amount.currency,
            status="pending",
            created_at=now,
            settle_at=now + timedelta(seconds=self.config.card_settle_delay_s),
            magic=magic,
            idempotency_keys=[key],
        )
        refund.executions += 1  # the one place where the acquirer takes a refund for execution
        self._state.refunds[refund.refund_id] = refund
        log.info("refund_accepted", refund_id=refund.refund_id)
        return refund

    def refund_status(self, refund_id: str) -> Reply:
        """`GET /card/v1/refunds/{refund_id}`: the refund as JSON, or 404."""

        def execute() -> tuple[Reply, Magic | None]:
            with self._lock:
                refund = self._state.refunds.get(refund_id)
                if refund is None:
                    return problem(404, "refund_not_found", "no refund with this refund_id"), None
                return Reply(200, _dumps(self._refund_view(refund)), JSON), None

        return self._with_faults("card.refund_status", (refund_id,), execute)

    @staticmethod
    def _refund_view(refund: Refund) -> dict[str, Any]:
        return {
            "refund_id": refund.refund_id,
            "acquirer_reference": refund.acquirer_reference,
            "payment_reference": refund.payment_reference,
            "amount": _money(refund.amount_minor, refund.currency),
            "status": refund.status,
            "failure_reason": refund.failure_reason,
            "created_at": _iso(refund.created_at),
            "settled_at": _iso(refund.settled_at),
        }

    @staticmethod
    def _chargeback_view(chargeback: Chargeback) -> dict[str, Any]:
        return {
            "id": chargeback.id,
            "payment_reference": chargeback.payment_reference,
            "amount": _money(chargeback.amount_minor, chargeback.currency),
            "reason_code": chargeback.reason_code,
            "created_at": _iso(chargeback.created_at),
            "refund_id": chargeback.refund_id,
        }

    def _queue_card_event(
        self, event_type: str, object_id: str, data: dict[str, Any], at: datetime, duplicate: bool
    ) -> None:
        webhook_id = self._state.next_id("msg")
        body = _dumps({"id": webhook_id, "type": event_type, "timestamp": _iso(at), "data": data})
        self._queue_callback(
            rail="card",
            event_type=event_type,
            object_id=object_id,
            content_type=JSON,
            body=body,
            at=at,
            duplicate=duplicate,
            webhook_id=webhook_id,
        )

    def create_chargeback(
        self,
        payment_reference: str,
        amount_minor: int,
        currency: str,
        reason_code: str,
        refund_id: str | None = None,
        at: datetime | None = None,
    ) -> Chargeback:
        """Raise a chargeback on a payment now (or at `at`) and queue `chargeback.created`."""
        with self._lock:
            chargeback = Chargeback(
                id=self._state.next_id("cb"),
                payment_reference=payment_reference,
                amount_minor=amount_minor,
                currency=currency,
                reason_code=reason_code,
                created_at=at or self.clock.now(),
                refund_id=refund_id,
            )
            self._state.chargebacks[chargeback.id] = chargeback
            refund = self._state.refunds.get(refund_id) if refund_id else None
            duplicate = refund is not None and refund.magic == Magic.DUPLICATE_CALLBACKS
            self._queue_card_event(
                "chargeback.created",
                chargeback.id,
                self._chargeback_view(chargeback),
                chargeback.created_at,
                duplicate,
            )
            self._save()
            log.info("chargeback_created", chargeback_id=chargeback.id)
            return chargeback

    def chargeback_view(self, chargeback: Chargeback) -> dict[str, Any]:
        """The JSON form of a chargeback, as in its webhook."""
        return self._chargeback_view(chargeback)

    def _settle_refund(self, refund: Refund) -> int:
        """Settle a due refund at its scheduled time; returns chargebacks raised."""
        at = refund.settle_at
        duplicate = refund.magic == Magic.DUPLICATE_CALLBACKS
        if refund.magic == Magic.FAIL_AT_SETTLEMENT:
            refund.status = "failed"
            refund.failure_reason = "refund_declined"
            self._queue_card_event("refund.failed", refund.refund_id, self._refund_view(refund), at, duplicate)
            log.info("refund_failed", refund_id=refund.refund_id)
            return 0
        refund.status = "succeeded"
        refund.settled_at = at
        log.info("refund_succeeded", refund_id=refund.refund_id)
        if refund.magic == Magic.OUT_OF_ORDER:
            # The chargeback is notified before the success of the refund it follows.
            self._raise_refund_chargeback(refund, at)
            self._queue_card_event("refund.succeeded", refund.refund_id, self._refund_view(refund), at, duplicate)
            return 1
        self._queue_card_event("refund.succeeded", refund.refund_id, self._refund_view(refund), at, duplicate)
        if refund.magic == Magic.RETURN:
            refund.chargeback_at = at + timedelta(seconds=self.config.chargeback_delay_s)
        return 0

    def _raise_refund_chargeback(self, refund: Refund, at: datetime) -> None:
        chargeback = self.create_chargeback(
            refund.payment_reference,
            refund.amount_minor,
            refund.currency,
            reason_code="13.1",
            refund_id=refund.refund_id,
            at=at,
        )
        refund.chargeback_id = chargeback.id

    def settlement_report(self, day: date, as_csv: bool) -> Reply:
        """`GET /card/v1/settlement-report`: refunds and chargebacks settled on `day`."""

        def execute() -> tuple[Reply, Magic | None]:
            with self._lock:
                items: list[dict[str, Any]] = []
                for refund in self._state.refunds.values():
                    if refund.settled_at is not None and refund.settled_at.date() == day:
                        items.append(
                            {
                                "type": "refund",
                                "id": refund.refund_id,
                                "payment_reference": refund.payment_reference,
                                "amount": _money(refund.amount_minor, refund.currency),
                                "settled_at": _iso(refund.settled_at),
                            }
                        )
                for chargeback in self._state.chargebacks.values():
                    if chargeback.created_at.date() == day:
                        items.append(
                            {
                                "type": "chargeback",
                                "id": chargeback.id,
                                "payment_reference": chargeback.payment_reference,
                                "amount": _money(chargeback.amount_minor, chargeback.currency),
                                "settled_at": _iso(chargeback.created_at),
                            }
                        )
            items.sort(key=lambda i: (i["settled_at"], i["type"], i["id"]))
            if as_csv:
                return Reply(200, _settlement_csv(items), "text/csv; charset=utf-8"), None
            totals: dict[str, dict[str, Any]] = {}
            for item in items:
                currency = item["amount"]["currency"]
                total = totals.setdefault(currency, {"currency": currency, "refunds": 0, "chargebacks": 0, "count": 0})
                total["refunds" if item["type"] == "refund" else "chargebacks"] += item["amount"]["amount"]
                total["count"] += 1
            body = {
                "date": day.isoformat(),
                "items": items,
                "totals": sorted(totals.values(), key=lambda t: str(t["currency"])),
            }
            return Reply(200, _dumps(body), JSON), None

        return self._with_faults("card.settlement_report", (), execute)

    # --- time ----------------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Do everything that is due on the simulator's clock, then deliver due callbacks."""
        with self._tick_lock:
            with self._lock:
                now = self.clock.now()
                settled = returned = chargebacks = 0
                for transfer in list(self._state.transfers.values()):
                    if transfer.status == "ACSP" and transfer.settle_at and transfer.settle_at <= now:
                        returned += self._settle_transfer(transfer)
                        settled += 1
                    if (
                        transfer.status == "ACSC"
                        and transfer.return_at is not None
                        and transfer.returned_at is None
                        and transfer.return_at <= now
                    ):
                        self._return(transfer, transfer.return_at, "AC04", "account closed")
                        returned += 1
                for refund in list(self._state.refunds.values()):
                    if refund.status == "pending" and refund.settle_at <= now:
                        chargebacks += self._settle_refund(refund)
                        settled += 1
                    if (
                        refund.chargeback_at is not None
                        and refund.chargeback_id is None
                        and refund.chargeback_at <= now
                    ):
                        self._raise_refund_chargeback(refund, refund.chargeback_at)
                        chargebacks += 1
                batch = self._due_callbacks(now)
                self._save()
            outcomes = [(callback, self._deliver(callback)) for callback in batch]
            with self._lock:
                delivered = failed = 0
                now = self.clock.now()
                for callback, (status, error, deliveries) in outcomes:
                    callback.attempts += 1
                    callback.last_status, callback.last_error = status, error
                    callback.deliveries += deliveries
                    if status is not None and 200 <= status < 300:
                        callback.delivered_at = now
                        delivered += 1
                        continue
                    failed += 1
                    if callback.attempts >= self.config.callback_attempts_max:
                        callback.failed = True
                        log.warning("callback_abandoned", webhook_id=callback.webhook_id)
                    else:
                        backoff_s = min(
                            self.config.callback_retry_base_s * 2 ** (callback.attempts - 1),
                            CALLBACK_RETRY_MAX_S,
                        )
                        callback.next_attempt_at = now + timedelta(seconds=backoff_s)
                self._save()
            return TickReport(settled, returned, chargebacks, delivered, failed)

    def _due_callbacks(self, now: datetime) -> list[Callback]:
        """Callbacks to attempt now, in order, with the callback fault rules applied."""
        due = [
            c
            for c in self._state.callbacks
            if c.delivered_at is None and not c.failed and c.next_attempt_at <= now and self._target(c.rail) is not None
        ][:CALLBACKS_PER_TICK_MAX]
        result: list[Callback] = []
        for rail in ("bank", "card"):
            rail_due = [c for c in due if c.rail == rail]
            keys = tuple(c.object_id for c in rail_due)
            if len(rail_due) > 1 and self.faults.take(f"{rail}.callback", keys, frozenset({"out_of_order"})):
                rail_due.reverse()
            for callback in rail_due:
                if self.faults.take(f"{rail}.callback", (callback.object_id,), frozenset({"duplicate"})):
                    callback.duplicate = True
            result.extend(rail_due)
        return result

    def _target(self, rail: str) -> tuple[str, str] | None:
        if rail == "bank":
            url, secret = self.config.bank_webhook_url, self.config.bank_webhook_secret
        else:
            url, secret = self.config.card_webhook_url, self.config.card_webhook_secret
        if url is None or secret is None:
            return None
        return url, secret

    def _deliver(self, callback: Callback) -> tuple[int | None, str | None, int]:
        """POST a callback (twice when it is to be duplicated); never raises."""
        target = self._target(callback.rail)
        if target is None:
            return None, "no webhook target", 0
        url, secret = target
        body = callback.body.encode("utf-8")
        status: int | None = None
        error: str | None = None
        deliveries = 0
        for _ in range(2 if callback.duplicate else 1):
            headers = signed_headers(
                secret=secret,
                webhook_id=callback.webhook_id,
                timestamp=self.config.signing_clock(),
                body=body,
                content_type=callback.content_type,
            )
            request = CallbackRequest(url, headers, body, callback.webhook_id, callback.event_type)
            try:
                status = self._sender(request)
            except Exception as exc:  # any failure of the receiver is a failed attempt, retried
                status, error = None, f"{type(exc).__name__}: {exc}"
                break
            if 200 <= status < 300:
                deliveries += 1
            else:
                break
        log.info("callback_sent", webhook_id=callback.webhook_id, status=status)
        return status, error, deliveries

    def move_clock(self, advance_s: float | None, now: datetime | None) -> datetime:
        """Control: move the clock forward; raises ClockError for a backwards move."""
        moved = self.clock.set(now) if now is not None else self.clock.advance(timedelta(seconds=advance_s or 0.0))
        with self._lock:
            self._save()
        return moved

    # --- the books ---------------------------------------------------------------------------

    def ledger(self) -> dict[str, Any]:
        """The simulator's own books: what it executed, booked, returned, per currency."""
        with self._lock:
            transfers = list(self._state.transfers.values())
            refunds = list(self._state.refunds.values())
            chargebacks = list(self._state.chargebacks.values())
            bank_totals: dict[str, dict[str, int | str]] = {}
            for t in transfers:
                if t.amount_minor is None or t.executions == 0:
                    continue
                total = bank_totals.setdefault(
                    t.currency,
                    {
                        "currency": t.currency,
                        "executed": 0,
                        "booked": 0,
                        "returned": 0,
                        "rejected_after_acceptance": 0,
                        "net_moved": 0,
                    },
                )
                total["executed"] = int(total["executed"]) + t.amount_minor * t.executions
                if t.booked_at is not None:
                    total["booked"] = int(total["booked"]) + t.amount_minor
                if t.returned_at is not None:
                    total["returned"] = int(total["returned"]) + t.amount_minor
                if t.status == "RJCT":
                    total["rejected_after_acceptance"] = int(total["rejected_after_acceptance"]) + t.amount_minor
                total["net_moved"] = int(total["booked"]) - int(total["returned"])
            card_totals: dict[str, dict[str, int | str]] = {}
            for r in refunds:
                total = card_totals.setdefault(
                    r.currency,
                    {
                        "currency": r.currency,
                        "executed": 0,
                        "refunded": 0,
                        "failed": 0,
                        "chargebacks": 0,
                    },
                )
                total["executed"] = int(total["executed"]) + r.amount_minor * r.executions
                if r.status == "succeeded":
                    total["refunded"] = int(total["refunded"]) + r.amount_minor
                if r.status == "failed":
                    total["failed"] = int(total["failed"]) + r.amount_minor
            for c in chargebacks:
                total = card_totals.setdefault(
                    c.currency,
                    {
                        "currency": c.currency,
                        "executed": 0,
                        "refunded": 0,
                        "failed": 0,
                        "chargebacks": 0,
                    },
                )
                total["chargebacks"] = int(total["chargebacks"]) + c.amount_minor
            executions = {f"bank:{t.end_to_end_id}": t.executions for t in transfers}
            executions.update({f"card:{r.refund_id}": r.executions for r in refunds})
            return {
                "bank": {
                    "transfers": [self._transfer_view(t) for t in transfers],
                    "totals": sorted(bank_totals.values(), key=lambda x: str(x["currency"])),
                },
                "card": {
                    "refunds": [
                        {
                            **self._refund_view(r),
                            "requests": r.requests,
                            "executions": r.executions,
                            "idempotency_keys": r.idempotency_keys,
                        }
                        for r in refunds
                    ],
                    "chargebacks": [self._chargeback_view(c) for c in chargebacks],
                    "totals": sorted(card_totals.values(), key=lambda x: str(x["currency"])),
                },
                "executions": executions,
                "executed_more_than_once": sorted(k for k, v in executions.items() if v > 1),
            }

    def callbacks(self) -> list[dict[str, Any]]:
        """Every callback with its delivery state, oldest first (for tests and operators)."""
        with self._lock:
            return [
                c.model_dump(mode="json", exclude={"body"}) | {"body_bytes": len(c.body)} for c in self._state.callbacks
            ]

    def reset(self) -> None:
        """Forget every instruction, callback and fault rule (the clock stays where it is)."""
        with self._lock:
            self._state = SimState()
            self.faults.clear()
            self._save()


def _normalised_amount(text: str) -> str:
    """A decimal amount in canonical form ("19.90" and "19.9" agree), for fingerprints only."""
    try:
        return format(Decimal(text.strip()).normalize(), "f")
    except InvalidOperation:
        return text


def _settlement_csv(items: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["type", "id", "payment_reference", "amount_minor", "currency", "settled_at"])
    for item in items:
        writer.writerow(
            [
                item["type"],
                item["id"],
                item["payment_reference"],
                item["amount"]["amount"],
                item["amount"]["currency"],
                item["settled_at"],
            ]
        )
    return out.getvalue().encode("utf-8")
