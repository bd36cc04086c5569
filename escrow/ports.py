"""What the core needs from the outside world, as Protocols; bootstrap picks implementations."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that tests move, so deadlines are reached without sleeping."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now


# --- payment rails -------------------------------------------------------------------------
#
# The core talks to a bank and a card acquirer through the two Protocols below. Inputs and
# outputs are domain dataclasses; the provider's XML or JSON never crosses this line.
#
# What a rail call can end in (the core must handle each, and only these):
#
#     result (a dataclass)          the rail answered; a decline or rejection is a result
#                                   with a reason code, never an exception
#     RailError                     rail_error
#     ├── RailUnavailable           rail_unavailable       nothing was executed: safe to retry
#     ├── OutcomeUnknown            outcome_unknown        maybe executed: ask the rail by key,
#     │                                                    never resend blindly with a new key
#     ├── InstructionConflict       instruction_conflict   the key was used for other content;
#     │                                                    nothing of this request was applied
#     ├── RailRequestRefused        rail_request_refused   the rail refused the request as
#     │                                                    malformed (a bug or config, not data)
#     └── RailMessageUnreadable     rail_message_unreadable  a notification, statement or
#                                                          response that cannot be read safely
#     WebhookRejected               webhook_rejected       a callback failed verification (401)
#
# Adapters retry RailUnavailable themselves, a bounded number of times, so a RailUnavailable
# that reaches the core means the rail stayed down; the outbox tries again later with the
# *same* idempotency key.

import re  # noqa: E402  # kept next to the rail section it serves; the Clock code above is frozen
from dataclasses import dataclass, field  # noqa: E402
from datetime import date  # noqa: E402
from enum import StrEnum  # noqa: E402
from typing import ClassVar, Literal  # noqa: E402

from escrow.errors import EscrowError, InvalidInput  # noqa: E402
from escrow.money import Money  # noqa: E402

END_TO_END_ID_CHARS_MAX = 35  # ISO 20022 Max35Text
REFUND_ID_CHARS_MAX = 140  # what acquirers commonly accept for a merchant refund reference
PARTY_NAME_CHARS_MAX = 140  # ISO 20022 Max140Text
REMITTANCE_CHARS_MAX = 140  # ISO 20022 Max140Text (unstructured remittance)
PAYMENT_REFERENCE_CHARS_MAX = 140

# Letters, digits and a few separators: a subset of what every ISO 20022 network accepts, so
# the same id works as EndToEndId, Idempotency-Key, URL path segment and log field.
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")


class RailError(EscrowError):
    """Base of what a rail adapter raises on purpose; `key` is the idempotency key involved."""

    code: ClassVar[str] = "rail_error"
    title: ClassVar[str] = "Payment rail error"

    def __init__(self, detail: str, *, key: str | None = None, **extra: object) -> None:
        super().__init__(detail, **extra)
        self.key = key


class RailUnavailable(RailError):
    """The rail could not be reached or said so before doing anything: safe to retry as is."""

    code = "rail_unavailable"
    title = "Payment rail unavailable"


class OutcomeUnknown(RailError):
    """The instruction was sent but no answer came back: it may have been executed.

    Never resend under a new key. Ask the rail (`transfer_status` / `refund_status`) with
    the same key; `unknown` there means it never arrived and the same instruction may be sent
    again with the same key.
    """

    code = "outcome_unknown"
    title = "Outcome of the instruction unknown"


class InstructionConflict(RailError):
    """The idempotency key was already used for different content; nothing was applied.

    Not retryable and not a decline: the first instruction under that key may well have
    moved money, so a human (or the reconciliation) has to look.
    """

    code = "instruction_conflict"
    title = "Idempotency key already used for another instruction"


class RailRequestRefused(RailError):
    """The rail refused the request as malformed or unauthorised; nothing was executed."""

    code = "rail_request_refused"
    title = "Payment rail refused the request"


class RailMessageUnreadable(RailError):
    """A notification, statement or answer that is not well-formed or not what was expected."""

    code = "rail_message_unreadable"
    title = "Unreadable message from the payment rail"


WebhookRejectionReason = Literal["missing_header", "malformed_header", "stale", "bad_signature"]


class WebhookRejected(EscrowError):
    """A callback failed Standard Webhooks verification; the receiver answers 401.

    `reason` is one of `missing_header`, `malformed_header`, `stale` (timestamp outside
    the tolerance, either way) or `bad_signature` (no configured secret matches).
    """

    code = "webhook_rejected"
    title = "Webhook verification failed"

    def __init__(self, reason: WebhookRejectionReason, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.reason: WebhookRejectionReason = reason


class InvalidInstruction(InvalidInput):
    """An instruction that cannot be written on the rail's wire (raised before any call)."""

    code = "invalid_instruction"
    title = "Instruction cannot be sent"


def _check_key(value: str, what: str, chars_max: int) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= chars_max or not _KEY_RE.match(value):
        raise InvalidInstruction(
            f"{what} must be 1..{chars_max} characters of letters, digits, '_', '.', ':' or '-', got {value!r}"
        )


def _check_text(value: str, what: str, chars_min: int, chars_max: int) -> None:
    if not isinstance(value, str) or not chars_min <= len(value) <= chars_max:
        raise InvalidInstruction(f"{what} must be {chars_min}..{chars_max} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidInstruction(f"{what} must not contain control characters")


def _check_positive(amount: Money) -> None:
    if not isinstance(amount, Money) or amount.amount_minor <= 0:
        raise InvalidInstruction("an instruction moves a positive amount")


# --- bank ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BankAccount:
    """An account at a bank. The IBAN/BIC are checked by the adapter (see `BankRail`)."""

    iban: str
    name: str
    bic: str | None = None

    def __post_init__(self) -> None:
        _check_text(self.name, "account holder name", 1, PARTY_NAME_CHARS_MAX)

    def __repr__(self) -> str:
        # Never let a full account number reach a log line or a traceback.
        return f"BankAccount(iban='{self.iban[:4]}***', name={self.name!r}, bic={self.bic!r})"


@dataclass(frozen=True, slots=True)
class CreditTransfer:
    """One credit transfer (payout or refund to a bank account) from the platform's account.

    `end_to_end_id` is the idempotency key: the bank executes one transfer per id, whatever
    the retries. The debtor account is the adapter's configuration, not part of the
    instruction. Raises InvalidInstruction for an id, name or text that no bank would accept.
    """

    end_to_end_id: str
    amount: Money
    creditor: BankAccount
    remittance: str = ""
    requested_execution_date: date | None = None

    def __post_init__(self) -> None:
        _check_key(self.end_to_end_id, "end_to_end_id", END_TO_END_ID_CHARS_MAX)
        if self.end_to_end_id.upper() == "NOTPROVIDED":
            raise InvalidInstruction("NOTPROVIDED is no end_to_end_id: the bank deduplicates on it")
        _check_positive(self.amount)
        _check_text(self.remittance, "remittance", 0, REMITTANCE_CHARS_MAX)


class TransferState(StrEnum):
    """Where a credit transfer stands at the bank."""

    ACCEPTED = "accepted"  # taken for execution, not booked yet
    BOOKED = "booked"  # debited from the platform's account
    RETURNED = "returned"  # booked, then sent back by the creditor bank (money is back)
    REJECTED = "rejected"  # refused, at once or at settlement: no money moved
    UNKNOWN = "unknown"  # the bank never received it (status queries only)


@dataclass(frozen=True, slots=True)
class TransferReceipt:
    """The bank's answer to `send_credit_transfer`.

    `state` is ACCEPTED, BOOKED or RETURNED for a transfer taken (BOOKED/RETURNED only on a
    replay), or REJECTED with an ISO 20022 `reason_code` (AC01 invalid creditor IBAN, AC04
    closed account, RC01 invalid BIC, AM.. amount problems). `replayed` is true when the
    bank had already received this EndToEndId with the same content.
    """

    end_to_end_id: str
    state: TransferState
    reason_code: str | None = None
    detail: str | None = None
    replayed: bool = False

    @property
    def accepted(self) -> bool:
        """True unless the bank refused the transfer."""
        return self.state is not TransferState.REJECTED


@dataclass(frozen=True, slots=True)
class TransferStatus:
    """What the bank knows of one EndToEndId; UNKNOWN means never received (safe to resend)."""

    end_to_end_id: str
    state: TransferState
    amount: Money | None = None
    reason_code: str | None = None


class BankEventKind(StrEnum):
    """What an inbound bank notification says happened."""

    BOOKED = "booked"  # camt.054 debit entry: the transfer left the platform's account
    RETURNED = "returned"  # camt.054 credit entry with a return reason: the money came back
    REJECTED = "rejected"  # pain.002 RJCT after acceptance (e.g. AM04 at settlement)


@dataclass(frozen=True, slots=True)
class BankEvent:
    """One fact from a camt.054 or pain.002 notification, keyed by EndToEndId."""

    kind: BankEventKind
    end_to_end_id: str
    amount: Money | None
    reason_code: str | None = None
    booked_on: date | None = None
    entry_reference: str | None = None  # the bank's id of the entry, for reconciliation
    message_id: str | None = None


class EntryDirection(StrEnum):
    """Seen from the platform's account."""

    DEBIT = "debit"
    CREDIT = "credit"


@dataclass(frozen=True, slots=True)
class StatementEntry:
    """One booked entry of an account statement; `amount` is positive, `direction` says which way."""

    entry_reference: str
    amount: Money
    direction: EntryDirection
    booked_on: date
    end_to_end_id: str | None
    return_reason: str | None = None


@dataclass(frozen=True, slots=True)
class AccountStatement:
    """One account in one currency over the statement period; balances are signed (credit > 0)."""

    account_iban: str
    currency: str
    opening_balance: Money
    closing_balance: Money
    entries: tuple[StatementEntry, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        return (
            f"AccountStatement(account_iban='{self.account_iban[:4]}***', currency={self.currency!r}, "
            f"opening_balance={self.opening_balance!r}, closing_balance={self.closing_balance!r}, "
            f"entries={len(self.entries)})"
        )


@dataclass(frozen=True, slots=True)
class Statement:
    """A bank statement (camt.053): one AccountStatement per account and currency."""

    statement_id: str
    accounts: tuple[AccountStatement, ...]

    @property
    def entries(self) -> tuple[StatementEntry, ...]:
        """Every entry of every account, in statement order."""
        return tuple(e for account in self.accounts for e in account.entries)


class BankRail(Protocol):
    """Credit transfers out of the platform's account, their statuses, notifications, statements.

    Invalid creditor IBAN or BIC (checksum, format) is a REJECTED receipt (AC01 / RC01), the
    same answer the bank gives, produced before anything is sent: a bad account stored
    for a payee is data to show to finance, not a crash of the outbox worker.
    """

    def send_credit_transfer(self, instruction: CreditTransfer) -> TransferReceipt:
        """Send one transfer, idempotent on its EndToEndId.

        Raises RailUnavailable (after the adapter's own bounded retries), OutcomeUnknown,
        InstructionConflict, RailRequestRefused.
        """
        ...

    def transfer_status(self, end_to_end_id: str) -> TransferStatus:
        """Ask the bank; UNKNOWN when it never received the id. Raises RailUnavailable."""
        ...

    def parse_notification(self, body: bytes) -> list[BankEvent]:
        """Read a verified callback body (camt.054 or pain.002). Raises RailMessageUnreadable."""
        ...

    def statement(self, on: date) -> Statement:
        """The platform account's statement of `on` (UTC). Raises RailUnavailable."""
        ...

    def parse_statement(self, body: bytes) -> Statement:
        """Read an uploaded statement (camt.053). Raises RailMessageUnreadable."""
        ...


# --- card ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardRefund:
    """A refund to the card of the original payment; `refund_id` is the idempotency key."""

    refund_id: str
    payment_reference: str
    amount: Money

    def __post_init__(self) -> None:
        _check_key(self.refund_id, "refund_id", REFUND_ID_CHARS_MAX)
        _check_text(self.payment_reference, "payment_reference", 1, PAYMENT_REFERENCE_CHARS_MAX)
        _check_positive(self.amount)


class RefundState(StrEnum):
    """Where a card refund stands at the acquirer."""

    PENDING = "pending"  # accepted, not settled yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # declined by the issuer or the network; `failure_reason` says why
    UNKNOWN = "unknown"  # the acquirer never received it (status queries only)


@dataclass(frozen=True, slots=True)
class RefundReceipt:
    """The acquirer's answer to `refund`; `replayed` when it had already seen the refund."""

    refund_id: str
    state: RefundState
    acquirer_reference: str | None = None
    failure_reason: str | None = None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class RefundStatus:
    """What the acquirer knows of one refund id; UNKNOWN means never received (safe to resend)."""

    refund_id: str
    state: RefundState
    amount: Money | None = None
    failure_reason: str | None = None


class CardEventKind(StrEnum):
    """What an acquirer webhook says happened."""

    REFUND_SUCCEEDED = "refund.succeeded"
    REFUND_FAILED = "refund.failed"
    CHARGEBACK_CREATED = "chargeback.created"


@dataclass(frozen=True, slots=True)
class CardEvent:
    """One fact from an acquirer webhook.

    For refunds `object_id` is the refund id; for chargebacks it is the acquirer's chargeback
    id and `refund_id` names the refund it follows, if any. `reason_code` is the refund's
    failure reason or the chargeback's network reason code.
    """

    kind: CardEventKind
    event_id: str
    object_id: str
    payment_reference: str
    amount: Money
    reason_code: str | None = None
    refund_id: str | None = None


class SettlementItemKind(StrEnum):
    REFUND = "refund"
    CHARGEBACK = "chargeback"


@dataclass(frozen=True, slots=True)
class SettlementItem:
    """One line of a card settlement report."""

    kind: SettlementItemKind
    object_id: str
    payment_reference: str
    amount: Money


@dataclass(frozen=True, slots=True)
class SettlementReport:
    """Refunds settled and chargebacks raised on one UTC day."""

    on: date
    items: tuple[SettlementItem, ...]

    def total(self, kind: SettlementItemKind, currency: str) -> Money:
        """Sum of the items of `kind` in `currency` (zero if none)."""
        matching = (i.amount.amount_minor for i in self.items if i.kind is kind and i.amount.currency == currency)
        return Money(sum(matching), currency)


class CardRail(Protocol):
    """Refunds to the original card, their statuses, webhooks and the settlement report."""

    def refund(self, instruction: CardRefund) -> RefundReceipt:
        """Start a refund, idempotent on `refund_id`.

        Raises RailUnavailable (after bounded retries), OutcomeUnknown, InstructionConflict,
        RailRequestRefused.
        """
        ...

    def refund_status(self, refund_id: str) -> RefundStatus:
        """Ask the acquirer; UNKNOWN when it never received the id. Raises RailUnavailable."""
        ...

    def parse_webhook(self, body: bytes) -> list[CardEvent]:
        """Read a verified webhook body; unknown event types give []. Raises RailMessageUnreadable."""
        ...

    def settlement_report(self, on: date) -> SettlementReport:
        """Refunds and chargebacks of `on` (UTC). Raises RailUnavailable."""
        ...
