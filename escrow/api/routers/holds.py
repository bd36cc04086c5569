"""Holds: place, read, list, release, extend, contest."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field, StrictStr
from starlette.responses import Response

from escrow.api.deps import Components, Operation, components, json_response, operation_for, require
from escrow.api.routers.orders import STAFF
from escrow.api.schemas import NO_NUL, ExternalId, MoneyIn, Reason, Strict, UtcDatetime
from escrow.auth import Principal, Role
from escrow.limits import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX
from escrow.persistence.tables import HOLD_STATUSES
from escrow.service.holds import contest_hold, extend_hold, get_hold, list_holds, place_hold, release_hold

router = APIRouter(prefix="/v1/holds", tags=["holds"])
HoldId = Annotated[StrictStr, Field(pattern=r"^hld_[0-9a-z]{26}$")]
FindingId = Annotated[StrictStr, Field(min_length=1, max_length=40, pattern=NO_NUL)]


class HoldIn(Strict):
    order_id: ExternalId
    amount: MoneyIn | None = None
    reason: Reason
    finding_ids: Annotated[tuple[FindingId, ...], Field(max_length=50)] = ()
    expires_at: UtcDatetime | None = None


class ReleaseIn(Strict):
    amount: MoneyIn | None = None
    reason: Reason


class ExtendIn(Strict):
    expires_at: UtcDatetime
    reason: Reason


class ContestIn(Strict):
    statement: Annotated[StrictStr, Field(min_length=1, max_length=10_000, pattern=NO_NUL)]


@router.post("", status_code=201)
def create_hold(
    body: HoldIn, op: Annotated[Operation, Depends(operation_for(Role.CHECKOUT, Role.IP_STAFF, Role.ADMIN))]
) -> Response:
    """Hold all (no amount) or part of an order's escrow."""
    policies = op.parts.settings.policies
    return op.run(
        body,
        lambda conn, actor, now: (
            201,
            place_hold(
                conn, actor, now, policies, order_id=body.order_id,
                amount=body.amount.money() if body.amount else None, reason=body.reason,
                finding_ids=list(body.finding_ids), expires_at=body.expires_at,
            ),
        ),
    )  # fmt: skip


@router.get("")
def holds_list(
    _: Annotated[Principal, Depends(require(Role.CHECKOUT, *STAFF))],
    parts: Annotated[Components, Depends(components)],
    status: Annotated[Literal[HOLD_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
    seller_id: Annotated[str | None, Query(max_length=120)] = None,
    order_id: Annotated[str | None, Query(max_length=120)] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    starting_after: Annotated[str | None, Query(pattern=r"^hld_[0-9a-z]{26}$")] = None,
) -> Response:
    with parts.engine.connect() as conn:
        data, more = list_holds(
            conn, status=status, seller_id=seller_id, order_id=order_id, starting_after=starting_after, limit=limit
        )
    return json_response(200, {"data": data, "has_more": more})


@router.get("/{hold_id}")
def hold_read(
    hold_id: HoldId,
    _: Annotated[Principal, Depends(require(Role.CHECKOUT, *STAFF))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    with parts.engine.connect() as conn:
        return json_response(200, get_hold(conn, hold_id))


@router.post("/{hold_id}/release")
def release(
    hold_id: HoldId,
    body: ReleaseIn,
    op: Annotated[Operation, Depends(operation_for(Role.CHECKOUT, Role.IP_STAFF, Role.ADMIN))],
) -> Response:
    """Release part (amount) or all of a hold."""
    amount = body.amount.money() if body.amount else None
    return op.run(body, lambda conn, actor, now: (200, release_hold(conn, actor, now, hold_id, amount, body.reason)))


@router.post("/{hold_id}/extend")
def extend(
    hold_id: HoldId, body: ExtendIn, op: Annotated[Operation, Depends(operation_for(Role.IP_STAFF, Role.ADMIN))]
) -> Response:
    """Move the deadline later, within the jurisdiction's cap on extensions."""
    policies = op.parts.settings.policies
    expires_at: datetime = body.expires_at
    return op.run(
        body, lambda conn, actor, now: (200, extend_hold(conn, actor, now, policies, hold_id, expires_at, body.reason))
    )


@router.post("/{hold_id}/contest")
def contest(
    hold_id: HoldId, body: ContestIn, op: Annotated[Operation, Depends(operation_for(Role.CHECKOUT, Role.ADMIN))]
) -> Response:
    """The seller's counter-notice; starts the jurisdiction's claim window."""
    policies = op.parts.settings.policies
    return op.run(
        body, lambda conn, actor, now: (200, contest_hold(conn, actor, now, policies, hold_id, body.statement))
    )
