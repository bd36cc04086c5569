"""The acquirer's JSON wire format, translated to and from `escrow.ports` dataclasses.

Money on this wire is already integer minor units (`{"amount": 1999, "currency": "EUR"}`),
so no decimal conversion happens here; the models are strict (an amount of `19.99` or
`"1999"` is unreadable, not coerced) because a coerced amount is a wrong amount.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any, Literal, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from escrow.errors import InvalidMoney
from escrow.money import Money
from escrow.ports import (
    CardEvent,
    CardEventKind,
    CardRefund,
    RailMessageUnreadable,
    RefundState,
    SettlementItem,
    SettlementItemKind,
    SettlementReport,
)

log = structlog.get_logger("adapters.card")

_ModelT = TypeVar("_ModelT", bound="_Model")

MESSAGE_BYTES_MAX = 16 * 1024 * 1024
SETTLEMENT_ITEMS_MAX = 1_000_000


class _Model(BaseModel):
    # Providers add fields over time; ignoring unknown ones keeps the adapter working.
    model_config = ConfigDict(extra="ignore", frozen=True)


class MoneyWire(_Model):
    amount: StrictInt
    currency: str = Field(min_length=3, max_length=3)

    def money(self) -> Money:
        try:
            return Money(self.amount, self.currency)
        except InvalidMoney as exc:
            raise RailMessageUnreadable(f"unreadable amount: {exc.detail}") from exc


class RefundWire(_Model):
    refund_id: str
    acquirer_reference: str | None = None
    payment_reference: str
    amount: MoneyWire
    status: Literal["pending", "succeeded", "failed"]
    failure_reason: str | None = None


class ChargebackWire(_Model):
    id: str
    payment_reference: str
    amount: MoneyWire
    reason_code: str | None = None
    refund_id: str | None = None


class EventWire(_Model):
    id: str
    type: str
    data: dict[str, Any]


class SettlementItemWire(_Model):
    type: Literal["refund", "chargeback"]
    id: str
    payment_reference: str
    amount: MoneyWire


class SettlementReportWire(_Model):
    date: date
    items: list[SettlementItemWire] = Field(max_length=SETTLEMENT_ITEMS_MAX)


def refund_body(refund: CardRefund) -> bytes:
    """The JSON body of `POST /card/v1/refunds`."""
    payload = {
        "refund_id": refund.refund_id,
        "payment_reference": refund.payment_reference,
        "amount": {"amount": refund.amount.amount_minor, "currency": refund.amount.currency},
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _load(body: bytes, model: type[_ModelT]) -> _ModelT:
    if len(body) > MESSAGE_BYTES_MAX:
        raise RailMessageUnreadable(f"message over {MESSAGE_BYTES_MAX} bytes")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()[:5])
        raise RailMessageUnreadable(f"unreadable {model.__name__}: {fields}") from exc


def parse_refund(body: bytes) -> RefundWire:
    """A refund object as the acquirer returns it; raises RailMessageUnreadable."""
    return _load(body, RefundWire)


def refund_state(wire: RefundWire) -> RefundState:
    return RefundState(wire.status)


def parse_webhook(body: bytes) -> list[CardEvent]:
    """`{"id", "type", "timestamp", "data"}` as CardEvents; an unknown type gives [] (logged)."""
    event = _load(body, EventWire)
    try:
        kind = CardEventKind(event.type)
    except ValueError:
        log.info("card_event_skipped", event_id=event.id, event_type=event.type[:64])
        return []
    try:
        if kind is CardEventKind.CHARGEBACK_CREATED:
            chargeback = ChargebackWire.model_validate(event.data)
            return [
                CardEvent(
                    kind=kind,
                    event_id=event.id,
                    object_id=chargeback.id,
                    payment_reference=chargeback.payment_reference,
                    amount=chargeback.amount.money(),
                    reason_code=chargeback.reason_code,
                    refund_id=chargeback.refund_id,
                )
            ]
        refund = RefundWire.model_validate(event.data)
    except ValidationError as exc:
        raise RailMessageUnreadable(f"unreadable data of {event.type} event {event.id}") from exc
    return [
        CardEvent(
            kind=kind,
            event_id=event.id,
            object_id=refund.refund_id,
            payment_reference=refund.payment_reference,
            amount=refund.amount.money(),
            reason_code=refund.failure_reason,
            refund_id=refund.refund_id,
        )
    ]


def parse_settlement_report(body: bytes) -> SettlementReport:
    """The JSON settlement report (not the CSV form) as a SettlementReport."""
    report = _load(body, SettlementReportWire)
    return SettlementReport(
        on=report.date,
        items=tuple(
            SettlementItem(
                kind=SettlementItemKind(item.type),
                object_id=item.id,
                payment_reference=item.payment_reference,
                amount=item.amount.money(),
            )
            for item in report.items
        ),
    )
