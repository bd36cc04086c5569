"""`CardRail` over the acquirer's JSON API (the simulator's acquirer speaks the same).

Endpoints (relative to the `httpx.Client`'s base URL): `POST /card/v1/refunds` with an
`Idempotency-Key` header (the refund id), `GET /card/v1/refunds/{refund_id}` and
`GET /card/v1/settlement-report?date=`.

How answers map (see `adapters.transport` for transport errors and 5xx):

    refund            201 / 200 (replayed) refund object -> receipt (a decline shows as
                      FAILED, at once or later through status and webhook: a result)
                      2xx unreadable -> OutcomeUnknown
                      409 refund_id_conflict, 422 idempotency_key_reused -> InstructionConflict
                      other 4xx -> RailRequestRefused
    refund_status     200 -> status; 404 -> UNKNOWN (never received: resend, same id)
    settlement_report 200 JSON -> SettlementReport
"""

from __future__ import annotations

from datetime import date
from urllib.parse import quote

import httpx
import structlog

from adapters.card.acquirer import wire
from adapters.transport import Exchange, RetryPolicy, problem_code, refused, request
from escrow.ports import (
    CardEvent,
    CardRefund,
    InstructionConflict,
    OutcomeUnknown,
    RailMessageUnreadable,
    RefundReceipt,
    RefundState,
    RefundStatus,
    SettlementReport,
)

log = structlog.get_logger("adapters.card")

REFUNDS_PATH = "/card/v1/refunds"
SETTLEMENT_REPORT_PATH = "/card/v1/settlement-report"
_CONFLICT_CODES = frozenset({"idempotency_key_reused", "refund_id_conflict"})


class AcquirerCardRail:
    """Refunds to the original card through the acquirer's JSON API."""

    def __init__(self, client: httpx.Client, *, retry: RetryPolicy | None = None) -> None:
        self._client = client
        self._retry = retry or RetryPolicy()

    def refund(self, instruction: CardRefund) -> RefundReceipt:
        """Start a refund; the refund id is the Idempotency-Key, so a resend executes nothing new."""
        body = wire.refund_body(instruction)
        key = instruction.refund_id
        receipt = self._retry.run("card.refund", key, lambda: self._post(body, key))
        log.info("card_refund_sent", refund_id=key, state=str(receipt.state), replayed=receipt.replayed)
        return receipt

    def _post(self, body: bytes, key: str) -> RefundReceipt:
        response = request(
            self._client,
            "POST",
            REFUNDS_PATH,
            exchange=Exchange.INSTRUCTION,
            key=key,
            content=body,
            headers={"content-type": "application/json", "idempotency-key": key},
        )
        if response.status_code in (409, 422) and problem_code(response) in _CONFLICT_CODES:
            raise InstructionConflict(f"refund {key} was already used for another refund", key=key)
        if not response.is_success:
            raise refused(response, key)
        try:
            refund = wire.parse_refund(response.content)
        except RailMessageUnreadable as exc:
            # A 2xx means the acquirer may have taken the refund: never guess.
            raise OutcomeUnknown(f"unreadable refund answer for {key}: {exc.detail}", key=key) from exc
        if refund.refund_id != key:
            raise OutcomeUnknown(f"the acquirer answered about {refund.refund_id!r}, not {key!r}", key=key)
        return RefundReceipt(
            refund_id=key,
            state=wire.refund_state(refund),
            acquirer_reference=refund.acquirer_reference,
            failure_reason=refund.failure_reason,
            replayed=response.headers.get("idempotent-replayed", "").lower() == "true",
        )

    def refund_status(self, refund_id: str) -> RefundStatus:
        """What the acquirer knows of `refund_id`; UNKNOWN on 404 (never received)."""
        return self._retry.run("card.refund_status", refund_id, lambda: self._status(refund_id))

    def _status(self, refund_id: str) -> RefundStatus:
        response = request(
            self._client,
            "GET",
            f"{REFUNDS_PATH}/{quote(refund_id, safe='')}",
            exchange=Exchange.QUERY,
            key=refund_id,
        )
        if response.status_code == 404:
            return RefundStatus(refund_id, RefundState.UNKNOWN)
        if not response.is_success:
            raise refused(response, refund_id)
        refund = wire.parse_refund(response.content)
        return RefundStatus(
            refund_id=refund_id,
            state=wire.refund_state(refund),
            amount=refund.amount.money(),
            failure_reason=refund.failure_reason,
        )

    def parse_webhook(self, body: bytes) -> list[CardEvent]:
        """Acquirer webhook body as CardEvents (verify the signature first)."""
        return wire.parse_webhook(body)

    def settlement_report(self, on: date) -> SettlementReport:
        """Refunds settled and chargebacks raised on the UTC day `on`."""
        return self._retry.run("card.settlement_report", None, lambda: self._report(on))

    def _report(self, on: date) -> SettlementReport:
        response = request(
            self._client,
            "GET",
            SETTLEMENT_REPORT_PATH,
            exchange=Exchange.QUERY,
            key=None,
            params={"date": on.isoformat(), "format": "json"},
            headers={"accept": "application/json"},
        )
        if not response.is_success:
            raise refused(response, None)
        return wire.parse_settlement_report(response.content)
