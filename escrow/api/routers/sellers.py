"""Seller endpoints that exist so far: recording a deposit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field, StrictStr
from starlette.responses import Response

from escrow.api.deps import Operation, operation_for
from escrow.api.schemas import ExternalId, MoneyIn, Reason, Strict
from escrow.auth import Role
from escrow.service.deposits import record_deposit

router = APIRouter(prefix="/v1/sellers", tags=["sellers"])


class DepositIn(Strict):
    amount: MoneyIn
    reference: Annotated[StrictStr, Field(min_length=1, max_length=140)]
    reason: Reason | None = None


@router.post("/{seller_id}/deposit", status_code=201)
def create_deposit(
    seller_id: ExternalId,
    body: DepositIn,
    op: Annotated[Operation, Depends(operation_for(Role.FINANCE, Role.IP_STAFF, Role.ADMIN))],
) -> Response:
    """Record a deposit received from the seller (bank transfer into the platform)."""
    return op.run(
        body,
        lambda conn, actor, now: (
            201,
            record_deposit(
                conn,
                actor,
                now,
                seller_id=seller_id,
                amount=body.amount.money(),
                reference=body.reference,
                reason=body.reason,
            ),
        ),
    )
