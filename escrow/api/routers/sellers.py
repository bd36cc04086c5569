"""Sellers: balances, freeze and unfreeze, deposits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field, StrictStr
from starlette.responses import Response

from escrow.api.deps import Components, Operation, components, json_response, operation_for, require
from escrow.api.schemas import ExternalId, MoneyIn, Reason, Strict
from escrow.auth import Principal, Role
from escrow.service.deposits import record_deposit
from escrow.service.sellers import freeze_seller, seller_view, unfreeze_seller

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


class FreezeIn(Strict):
    reason: Reason


STAFF = (Role.CP_AGENT, Role.CP_SUPERVISOR, Role.IP_STAFF, Role.FINANCE, Role.LEGAL, Role.ADMIN)


@router.get("/{seller_id}")
def read_seller(
    seller_id: ExternalId,
    _: Annotated[Principal, Depends(require(*STAFF))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    """Balances per currency (escrowed, held, payable, frozen, deposit, owed) and freeze state."""
    with parts.engine.connect() as conn:
        return json_response(200, seller_view(conn, seller_id))


@router.post("/{seller_id}/freeze")
def freeze(
    seller_id: ExternalId, body: FreezeIn, op: Annotated[Operation, Depends(operation_for(Role.IP_STAFF, Role.ADMIN))]
) -> Response:
    """Freeze: payable moves to frozen and future proceeds go to frozen."""
    return op.run(body, lambda conn, actor, now: (200, freeze_seller(conn, actor, now, seller_id, body.reason)))


@router.post("/{seller_id}/unfreeze")
def unfreeze(
    seller_id: ExternalId,
    body: FreezeIn,
    op: Annotated[Operation, Depends(operation_for(Role.CP_SUPERVISOR, Role.ADMIN))],
) -> Response:
    """Unfreeze: releases what no hold ties down (needs cp_supervisor or admin)."""
    return op.run(body, lambda conn, actor, now: (200, unfreeze_seller(conn, actor, now, seller_id, body.reason)))
