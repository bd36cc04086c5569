"""`BankRail` over HTTP with ISO 20022 messages (the simulator's bank speaks the same).

Endpoints (relative to the `httpx.Client`'s base URL):
`POST /bank/v1/credit-transfers` (pain.001 in, pain.002 out), `GET
/bank/v1/credit-transfers/{EndToEndId}` (pain.002, or 404 when never received) and `GET
/bank/v1/statements?date=` (camt.053).

How answers map (see `adapters.transport` for transport errors and 5xx):

    send_credit_transfer   200 pain.002 line ACSP/ACSC/RJCT -> receipt (RJCT is a result)
                           200 unreadable, or no line for our id -> OutcomeUnknown
                           409 -> InstructionConflict; other 4xx -> RailRequestRefused
    transfer_status        200 -> status; 404 -> UNKNOWN (never received: resend, same id)
    statement              200 camt.053 -> Statement

An invalid creditor IBAN or BIC never reaches the bank: it is answered locally as a REJECTED
receipt with the reason code the bank would give (AC01, RC01), so the outbox worker
treats it like any other rejection instead of retrying a payload that cannot succeed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import date
from urllib.parse import quote

import httpx
import structlog

from adapters.bank.accounts import account_rejection, normalised
from adapters.bank.iso20022 import wire
from adapters.transport import Exchange, RetryPolicy, refused, request
from escrow.errors import ConfigurationError
from escrow.ports import (
    BankAccount,
    BankEvent,
    Clock,
    CreditTransfer,
    InstructionConflict,
    OutcomeUnknown,
    RailMessageUnreadable,
    Statement,
    SystemClock,
    TransferReceipt,
    TransferState,
    TransferStatus,
)

log = structlog.get_logger("adapters.bank")

CREDIT_TRANSFERS_PATH = "/bank/v1/credit-transfers"
STATEMENTS_PATH = "/bank/v1/statements"
XML_HEADERS = {"content-type": "application/xml", "accept": "application/xml"}


def new_message_id() -> str:
    """A fresh MsgId/PmtInfId (Max35Text); the bank deduplicates on EndToEndId, not on this."""
    return "M" + secrets.token_hex(16)


class Iso20022BankRail:
    """A bank reached over HTTP with pain.001 / pain.002 / camt.05x.

    `debtor` is the platform's account the transfers are paid from; it is checked at
    construction (ConfigurationError), because a wrong account is a deployment mistake.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        debtor: BankAccount,
        schema: wire.Pain001Schema = "pain.001.001.03",
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        message_ids: Callable[[], str] = new_message_id,
    ) -> None:
        if account_rejection(debtor) is not None:
            raise ConfigurationError("the debtor account of the bank adapter has an invalid IBAN or BIC")
        self._client = client
        self._debtor = normalised(debtor)
        self._schema: wire.Pain001Schema = schema
        self._clock = clock or SystemClock()
        self._retry = retry or RetryPolicy()
        self._message_ids = message_ids

    def send_credit_transfer(self, instruction: CreditTransfer) -> TransferReceipt:
        """Send one transfer, idempotent on its EndToEndId (see the module docstring)."""
        e2e = instruction.end_to_end_id
        rejection = account_rejection(instruction.creditor)
        if rejection is not None:
            log.info("credit_transfer_rejected_locally", end_to_end_id=e2e, reason=rejection[0])
            return TransferReceipt(e2e, TransferState.REJECTED, reason_code=rejection[0], detail=rejection[1])
        now = self._clock.now()
        transfer = CreditTransfer(
            end_to_end_id=e2e,
            amount=instruction.amount,
            creditor=normalised(instruction.creditor),
            remittance=instruction.remittance,
            requested_execution_date=instruction.requested_execution_date,
        )
        body = wire.render_pain001(
            transfer,
            self._debtor,
            message_id=self._message_ids(),
            created_at=now,
            execution_date=instruction.requested_execution_date or now.date(),
            schema=self._schema,
        )
        receipt = self._retry.run("bank.send_credit_transfer", e2e, lambda: self._post(body, e2e))
        log.info("credit_transfer_sent", end_to_end_id=e2e, state=str(receipt.state), reason=receipt.reason_code)
        return receipt

    def _post(self, body: bytes, e2e: str) -> TransferReceipt:
        response = request(
            self._client,
            "POST",
            CREDIT_TRANSFERS_PATH,
            exchange=Exchange.INSTRUCTION,
            key=e2e,
            content=body,
            headers=XML_HEADERS,
        )
        if response.status_code == 409:
            raise InstructionConflict(f"EndToEndId {e2e} was already used for another transfer", key=e2e)
        if not response.is_success:
            raise refused(response, e2e)
        try:
            report = wire.parse_pain002(response.content)
        except RailMessageUnreadable as exc:
            # The bank answered 2xx, so it may well have executed: never guess.
            raise OutcomeUnknown(f"unreadable pain.002 for {e2e}: {exc.detail}", key=e2e) from exc
        line = report.line(e2e)
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        if line is None:
            if report.group_status == "RJCT":
                return TransferReceipt(e2e, TransferState.REJECTED, reason_code=report.group_reason, replayed=replayed)
            raise OutcomeUnknown(f"the pain.002 has no status for {e2e}", key=e2e)
        return TransferReceipt(e2e, line.state, reason_code=line.reason_code, detail=line.detail, replayed=replayed)

    def transfer_status(self, end_to_end_id: str) -> TransferStatus:
        """What the bank knows of `end_to_end_id`; UNKNOWN on 404 (never received)."""
        return self._retry.run("bank.transfer_status", end_to_end_id, lambda: self._status(end_to_end_id))

    def _status(self, e2e: str) -> TransferStatus:
        response = request(
            self._client,
            "GET",
            f"{CREDIT_TRANSFERS_PATH}/{quote(e2e, safe='')}",
            exchange=Exchange.QUERY,
            key=e2e,
            headers={"accept": "application/xml"},
        )
        if response.status_code == 404:
            return TransferStatus(e2e, TransferState.UNKNOWN)
        if not response.is_success:
            raise refused(response, e2e)
        line = wire.parse_pain002(response.content).line(e2e)
        if line is None:
            raise RailMessageUnreadable(f"status report without a line for {e2e}", key=e2e)
        return TransferStatus(e2e, line.state, amount=line.amount, reason_code=line.reason_code)

    def parse_notification(self, body: bytes) -> list[BankEvent]:
        """camt.054 entries and pain.002 rejections as BankEvents (verify the signature first)."""
        return wire.parse_notification(body)

    def statement(self, on: date) -> Statement:
        """The debtor account's camt.053 statement for the UTC day `on`."""
        return self._retry.run("bank.statement", None, lambda: self._statement(on))

    def _statement(self, on: date) -> Statement:
        response = request(
            self._client,
            "GET",
            STATEMENTS_PATH,
            exchange=Exchange.QUERY,
            key=None,
            params={"date": on.isoformat(), "account": self._debtor.iban},
            headers={"accept": "application/xml"},
        )
        if not response.is_success:
            raise refused(response, None)
        return wire.parse_camt053(response.content)

    def parse_statement(self, body: bytes) -> Statement:
        """Read an uploaded camt.053."""
        return wire.parse_camt053(body)
