"""Advance refunds (refund-first), their recovery, and the guarantee fund that pays them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field, StrictStr
from starlette.responses import Response

from escrow.api.deps import Components, Operation, components, json_response, operation_for, require
from escrow.api.schemas import NO_NUL, ExternalId, MoneyIn, Reason, Strict
from escrow.auth import Principal, Role
from escrow.limits import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX
from escrow.service import advance_refunds as service

router = APIRouter(prefix="/v1", tags=["refunds"])
RefundId = Annotated[StrictStr, Field(pattern=r"^ref_[0-9a-z]{26}$")]
RefundStatus = Literal["pending_approval", "submitted", "succeeded", "failed", "rejected"]
STAFF = (Role.CP_AGENT, Role.CP_SUPERVISOR, Role.IP_STAFF, Role.FINANCE, Role.LEGAL, Role.ADMIN)
SUPERVISORS = (Role.CP_SUPERVISOR, Role.ADMIN)
FINANCE = (Role.FINANCE, Role.ADMIN)


class AdvanceRefundIn(Strict):
    order_id: ExternalId
    amount: MoneyIn
    reason: Reason


class DecisionIn(Strict):
    reason: Reason | None = None


class RejectIn(Strict):
    reason: Reason


class CardDestination(Strict):
    rail: Literal["card"]
    payment_reference: Annotated[StrictStr, Field(min_length=1, max_length=140, pattern=NO_NUL)]


class BankDestination(Strict):
    """A credit transfer to the payout account registered for `party_id` (PUT /v1/parties/{id}/payout-account)."""

    rail: Literal["bank"]
    party_id: ExternalId


class RetryIn(Strict):
    destination: Annotated[CardDestination | BankDestination, Field(discriminator="rail")]
    reason: Reason | None = None


class WriteOffIn(Strict):
    amount: MoneyIn | None = None
    reason: Reason


class TopUpIn(Strict):
    amount: MoneyIn
    reference: Annotated[StrictStr, Field(min_length=1, max_length=140, pattern=NO_NUL)]
    reason: Reason | None = None


@router.post("/refunds", status_code=201)
def create_refund(
    body: AdvanceRefundIn,
    op: Annotated[Operation, Depends(operation_for(Role.CP_AGENT, Role.CP_SUPERVISOR, Role.ADMIN))],
) -> Response:
    """Advance refund from the guarantee fund; above the threshold it waits for a second supervisor."""
    policies = op.parts.settings.policies
    return op.run(
        body,
        lambda conn, actor, now: service.request_refund(
            conn, actor, now, policies, order_id=body.order_id, amount=body.amount.money(), reason=body.reason
        ),
    )


@router.get("/refunds")
def read_refunds(
    _: Annotated[Principal, Depends(require(*STAFF))],
    parts: Annotated[Components, Depends(components)],
    status: RefundStatus | None = None,
    order_id: Annotated[str | None, Query(min_length=1, max_length=120)] = None,
    seller_id: Annotated[str | None, Query(min_length=1, max_length=120)] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    starting_after: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """Advance refunds, oldest first, filtered by status, order and seller."""
    with parts.engine.connect() as conn:
        data, more = service.list_refunds(
            conn, status=status, order_id=order_id, seller_id=seller_id, starting_after=starting_after, limit=limit
        )
    return json_response(200, {"data": data, "has_more": more})


@router.get("/refunds/{refund_id}")
def read_refund(
    refund_id: RefundId,
    _: Annotated[Principal, Depends(require(*STAFF))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    """The refund with its approval, attempt and `recovery: {status, outstanding, recovered, written_off}`."""
    with parts.engine.connect() as conn:
        return json_response(200, service.get_refund(conn, refund_id))


@router.post("/refunds/{refund_id}/approve")
def approve(
    refund_id: RefundId,
    op: Annotated[Operation, Depends(operation_for(*SUPERVISORS))],
    body: DecisionIn | None = None,
) -> Response:
    """Approve a pending refund (four eyes: not by its requester); it is paid at once."""
    policies = op.parts.settings.policies
    reason = body.reason if body else None
    payload: dict[str, Any] = {"refund_id": refund_id, "reason": reason}
    return op.run(
        payload, lambda conn, actor, now: (200, service.approve_refund(conn, actor, now, policies, refund_id, reason))
    )


@router.post("/refunds/{refund_id}/reject")
def reject(
    refund_id: RefundId, body: RejectIn, op: Annotated[Operation, Depends(operation_for(*SUPERVISORS))]
) -> Response:
    """Reject a pending refund (four eyes: not by its requester); nothing is paid."""
    return op.run(body, lambda conn, actor, now: (200, service.reject_refund(conn, actor, now, refund_id, body.reason)))


@router.post("/refunds/{refund_id}/retry")
def retry(
    refund_id: RefundId,
    body: RetryIn,
    op: Annotated[Operation, Depends(operation_for(Role.CP_SUPERVISOR, Role.FINANCE, Role.ADMIN))],
) -> Response:
    """Pay a failed advance refund again, to another destination."""
    policies = op.parts.settings.policies
    destination = body.destination.model_dump()
    return op.run(
        body,
        lambda conn, actor, now: (
            200,
            service.retry_refund(conn, actor, now, policies, refund_id, destination, body.reason),
        ),
    )


@router.post("/refunds/{refund_id}/recover")
def recover(
    refund_id: RefundId,
    op: Annotated[Operation, Depends(operation_for(Role.FINANCE, Role.CP_SUPERVISOR, Role.ADMIN))],
) -> Response:
    """Recover now, from whatever money of the seller is available, per the waterfall."""
    policies = op.parts.settings.policies
    return op.run(
        {"refund_id": refund_id},
        lambda conn, actor, now: (200, service.recover_refund(conn, actor, now, policies, refund_id)),
    )


@router.post("/refunds/{refund_id}/write-off")
def write_off(
    refund_id: RefundId, body: WriteOffIn, op: Annotated[Operation, Depends(operation_for(*FINANCE))]
) -> Response:
    """Write off part or all of what the seller still owes for this refund."""
    amount = body.amount.money() if body.amount else None
    return op.run(
        body, lambda conn, actor, now: (200, service.write_off(conn, actor, now, refund_id, amount, body.reason))
    )


@router.get("/guarantee-fund")
def read_guarantee_fund(
    _: Annotated[Principal, Depends(require(Role.FINANCE, Role.CP_SUPERVISOR, Role.ADMIN))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    """The fund's balance per currency and what is advanced and not yet recovered."""
    with parts.engine.connect() as conn:
        return json_response(200, service.guarantee_fund_view(conn))


@router.post("/guarantee-fund/top-ups", status_code=201)
def top_up(body: TopUpIn, op: Annotated[Operation, Depends(operation_for(*FINANCE))]) -> Response:
    """Book money finance paid into the guarantee fund."""
    return op.run(
        body,
        lambda conn, actor, now: (
            201,
            service.top_up_guarantee_fund(
                conn, actor, now, amount=body.amount.money(), reference=body.reference, reason=body.reason
            ),
        ),
    )
