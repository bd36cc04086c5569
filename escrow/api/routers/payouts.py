"""Payouts: list, read, retry (finance)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field, StrictStr
from starlette.responses import Response

from escrow.api.deps import Components, Operation, components, json_response, operation_for, require
from escrow.auth import Principal, Role
from escrow.limits import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX
from escrow.service.payouts import get_payout, list_payouts, retry_payout

router = APIRouter(prefix="/v1/payouts", tags=["payouts"])
PayoutId = Annotated[StrictStr, Field(pattern=r"^pay_[0-9a-z]{26}$")]
PayoutStatus = Literal["pending", "submitted", "paid", "failed", "returned"]
FINANCE = (Role.FINANCE, Role.ADMIN)


@router.get("")
def read_payouts(
    _: Annotated[Principal, Depends(require(*FINANCE))],
    parts: Annotated[Components, Depends(components)],
    status: PayoutStatus | None = None,
    party_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    starting_after: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """Payouts, oldest first, filtered by status and party."""
    with parts.engine.connect() as conn:
        data, more = list_payouts(conn, status=status, party_id=party_id, starting_after=starting_after, limit=limit)
    return json_response(200, {"data": data, "has_more": more})


@router.get("/{payout_id}")
def read_payout(
    payout_id: PayoutId,
    _: Annotated[Principal, Depends(require(*FINANCE))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    with parts.engine.connect() as conn:
        return json_response(200, get_payout(conn, payout_id))


@router.post("/{payout_id}/retry", status_code=201)
def retry(payout_id: PayoutId, op: Annotated[Operation, Depends(operation_for(*FINANCE))]) -> Response:
    """Pay a failed or returned payout again under a new EndToEndId, to the party's current account."""
    return op.run({"payout_id": payout_id}, lambda conn, actor, now: (201, retry_payout(conn, actor, now, payout_id)))
