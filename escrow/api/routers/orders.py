"""Orders: intake (single and batch), read, confirm, ordinary refund."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends
from pydantic import Field, StrictStr, ValidationError, field_validator
from sqlalchemy import Connection
from starlette.responses import Response

from escrow import idempotency
from escrow.api.deps import Components, Operation, components, json_response, operation_for, require
from escrow.api.problems import echoed, from_error, problem_body
from escrow.api.schemas import NO_NUL, ExternalId, MoneyIn, Reason, Strict
from escrow.audit import Actor
from escrow.auth import Principal, Role
from escrow.errors import EscrowError
from escrow.limits import BATCH_ORDERS_MAX
from escrow.service.orders import (
    NewOrder,
    confirm_order,
    get_order,
    record_order,
    record_orders_bulk,
    record_passing_order,
)
from escrow.service.refunds import refund_order
from escrow.service.screening import Screening

router = APIRouter(prefix="/v1", tags=["orders"])
log = structlog.get_logger(__name__)
INTAKE_ROLES = frozenset({Role.CHECKOUT, Role.ADMIN})
STAFF = (Role.CP_AGENT, Role.CP_SUPERVISOR, Role.IP_STAFF, Role.FINANCE, Role.LEGAL, Role.ADMIN)


class PaymentIn(Strict):
    method: Literal["card", "bank_transfer"]
    reference: Annotated[StrictStr, Field(min_length=1, max_length=140, pattern=NO_NUL)]


class OrderIn(Strict):
    order_id: ExternalId
    buyer_id: ExternalId
    seller_id: ExternalId
    listing_id: ExternalId
    title: Annotated[StrictStr, Field(min_length=1, max_length=1000, pattern=NO_NUL)]
    amount: MoneyIn
    payment: PaymentIn
    jurisdiction: Annotated[StrictStr, Field(min_length=2, max_length=8, pattern=r"^[A-Z]{2,8}$")]


BATCH_ITEM_NESTING_MAX = 16  # an order is 3 levels deep; anything far deeper is refused whole


class BatchIn(Strict):
    orders: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=BATCH_ORDERS_MAX)]

    @field_validator("orders")
    @classmethod
    def _not_too_deep(cls, orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items stay raw JSON until each is validated, and travel whole into the
        idempotency fingerprint, whose serializer refuses deep nesting (a 500 at ~260 levels)."""
        level: list[Any] = list(orders)
        for _ in range(BATCH_ITEM_NESTING_MAX):
            level = [
                v for x in level for v in (x.values() if isinstance(x, dict) else x if isinstance(x, list) else ())
            ]
            if not level:
                return orders
        raise ValueError(f"an order is nested more than {BATCH_ITEM_NESTING_MAX} levels deep")


class RefundIn(Strict):
    amount: MoneyIn | None = None
    reason: Reason


def new_order(body: OrderIn) -> NewOrder:
    return NewOrder(
        order_id=body.order_id,
        buyer_id=body.buyer_id,
        seller_id=body.seller_id,
        listing_id=body.listing_id,
        title=body.title,
        amount=body.amount.money(),
        payment_method=body.payment.method,
        payment_reference=body.payment.reference,
        jurisdiction=body.jurisdiction,
        request_hash=idempotency.fingerprint("POST", "/v1/orders", body.model_dump(mode="json")),
    )


def screen(parts: Components, body: OrderIn) -> Screening:
    """Screen outside the order's transaction: matching is CPU work and must hold no lock."""
    return parts.screener.screen(body.title, body.seller_id, body.listing_id)


@router.post("/orders", status_code=201)
def create_order(body: OrderIn, op: Annotated[Operation, Depends(operation_for(*INTAKE_ROLES))]) -> Response:
    """Record a paid order and screen it; 201 new, 200 the same order again, 409 a different one.

    The common case is answered before routing by `escrow.api.intake` with the same
    functions; whatever it passes on is answered here.
    """
    screening = screen(op.parts, body)
    order = new_order(body)
    if screening.decision == "pass":  # the common case: one round trip on PostgreSQL
        done = op.run_statement(lambda conn, actor, now: record_passing_order(conn, actor, now, order, screening))
        if done is not None:
            return done
    policies = op.parts.settings.policies
    return op.run(body, lambda conn, actor, now: record_order(conn, actor, now, order, screening, policies))


def _invalid(index: int, raw: dict[str, Any], exc: ValidationError, request_id: str | None) -> dict[str, Any]:
    errors = [{"field": echoed(".".join(str(p) for p in e["loc"])), "message": e["msg"]} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    order_id = raw.get("order_id")
    return {
        "index": index,
        "order_id": echoed(order_id) if isinstance(order_id, str) else None,
        "status": 422,
        "problem": problem_body(422, "validation_failed", "Invalid order", detail, request_id, errors=errors),
    }


@router.post("/orders:batch")
def create_orders(body: BatchIn, op: Annotated[Operation, Depends(operation_for(*INTAKE_ROLES))]) -> Response:
    """Up to BATCH_ORDERS_MAX orders; each one is recorded atomically and answered on its own."""
    request_id = op.actor.request_id
    prepared: list[tuple[int, OrderIn, Screening] | dict[str, Any]] = []
    for index, raw in enumerate(body.orders):
        try:
            order = OrderIn.model_validate(raw)
        except ValidationError as exc:
            prepared.append(_invalid(index, raw, exc, request_id))
            continue
        prepared.append((index, order, screen(op.parts, order)))
    policies = op.parts.settings.policies

    def answer(index: int, order_id: str, outcome: tuple[int, dict[str, Any]] | EscrowError) -> dict[str, Any]:
        if isinstance(outcome, EscrowError):
            problem = from_error(outcome, request_id)
            return {"index": index, "order_id": order_id, "status": problem["status"], "problem": problem}
        return {"index": index, "order_id": order_id, "status": outcome[0], "order": outcome[1]}

    def one_by_one(conn: Connection, actor: Actor, now: Any, item: tuple[int, OrderIn, Screening]) -> dict[str, Any]:
        index, order, screening = item
        savepoint = conn.begin_nested()  # each order atomic on its own
        try:
            outcome: tuple[int, dict[str, Any]] | EscrowError = record_order(
                conn, actor, now, new_order(order), screening, policies
            )
        except EscrowError as exc:
            savepoint.rollback()
            outcome = exc
        else:
            savepoint.commit()
        return answer(index, order.order_id, outcome)

    def work(conn: Connection, actor: Actor, now: Any) -> tuple[int, dict[str, Any]]:
        valid = [item for item in prepared if not isinstance(item, dict)]
        answered: dict[int, dict[str, Any]] = {item["index"]: item for item in prepared if isinstance(item, dict)}
        if valid and conn.dialect.name == "postgresql":
            savepoint = conn.begin_nested()
            try:
                outcomes = record_orders_bulk(
                    conn, actor, now, [(new_order(order), screening) for _, order, screening in valid], policies
                )
            except Exception:  # one bad order must not sink the batch: go one by one
                savepoint.rollback()
                log.warning("batch_fell_back_to_single_orders", orders=len(valid))
            else:
                savepoint.commit()
                for (index, order, _), outcome in zip(valid, outcomes, strict=True):
                    answered[index] = answer(index, order.order_id, outcome)
                valid = []
        for item in valid:
            answered[item[0]] = one_by_one(conn, actor, now, item)
        return 200, {"data": [answered[i] for i in sorted(answered)]}

    # The items as parsed, not pydantic's JSON dump of them: raw JSON may hold what that dump
    # cannot write (a lone surrogate in a nested key), which the fingerprint's own fallback can.
    # For everything else the two are the same values, so the fingerprint is unchanged.
    return op.run({"orders": body.orders}, work)


@router.get("/orders/{order_id}")
def read_order(
    order_id: ExternalId,
    _: Annotated[Principal, Depends(require(Role.CHECKOUT, *STAFF))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    with parts.engine.connect() as conn:
        return json_response(200, get_order(conn, order_id))


@router.post("/orders/{order_id}/confirm")
def confirm(
    order_id: ExternalId, op: Annotated[Operation, Depends(operation_for(Role.CHECKOUT, Role.ADMIN))]
) -> Response:
    """The buyer confirmed receipt."""
    return op.run({"order_id": order_id}, lambda conn, actor, now: (200, confirm_order(conn, actor, now, order_id)))


@router.post("/orders/{order_id}/refund")
def refund(
    order_id: ExternalId,
    body: RefundIn,
    op: Annotated[Operation, Depends(operation_for(Role.CHECKOUT, Role.CP_AGENT, Role.ADMIN))],
) -> Response:
    """Ordinary refund of unheld escrow before confirmation (all of it when no amount is given)."""
    amount = body.amount.money() if body.amount else None
    return op.run(body, lambda conn, actor, now: (200, refund_order(conn, actor, now, order_id, amount, body.reason)))
