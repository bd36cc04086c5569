"""Sellers: balances and strike standing, freeze and unfreeze, deposits and confiscation, penalties."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field, StrictInt, StrictStr
from starlette.responses import Response

from escrow.api.deps import Components, Operation, components, json_response, operation_for, require
from escrow.api.schemas import NO_NUL, ExternalId, MoneyIn, Reason, Strict
from escrow.auth import Principal, Role
from escrow.service.deposits import confiscate_deposit, record_deposit
from escrow.service.sellers import freeze_seller, seller_view, unfreeze_seller
from escrow.service.strikes import penalize, standing

router = APIRouter(prefix="/v1/sellers", tags=["sellers"])


class DepositIn(Strict):
    amount: MoneyIn
    reference: Annotated[StrictStr, Field(min_length=1, max_length=140, pattern=NO_NUL)]
    reason: Reason | None = None


@router.post("/{seller_id}/deposit", status_code=201)
def create_deposit(
    seller_id: ExternalId,
    body: DepositIn,
    op: Annotated[Operation, Depends(operation_for(Role.FINANCE, Role.IP_STAFF, Role.ADMIN))],
) -> Response:
    """Record a deposit received from the seller; what the seller owes is recovered from it per policy."""
    policies = op.parts.settings.policies
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
                policies=policies,
            ),
        ),
    )


FindingId = Annotated[StrictStr, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.\-]+$")]


class ConfiscateIn(Strict):
    amount: MoneyIn | None = None
    reason: Reason
    finding_ids: Annotated[list[FindingId], Field(min_length=1, max_length=100)]


@router.post("/{seller_id}/deposit/confiscate")
def confiscate(
    seller_id: ExternalId,
    body: ConfiscateIn,
    op: Annotated[Operation, Depends(operation_for(Role.FINANCE, Role.IP_STAFF, Role.ADMIN))],
) -> Response:
    """Confiscate part or all of the deposit: it pays what the seller owes, the rest goes to the guarantee fund."""
    amount = body.amount.money() if body.amount else None
    return op.run(
        body,
        lambda conn, actor, now: (
            200,
            confiscate_deposit(
                conn, actor, now, seller_id=seller_id, amount=amount, reason=body.reason,
                finding_ids=list(body.finding_ids),
            ),
        ),
    )  # fmt: skip


class PenaltyIn(Strict):
    points: Annotated[StrictInt, Field(ge=1, le=1000)]
    reason: Reason
    finding_id: FindingId


@router.post("/{seller_id}/penalties", status_code=201)
def add_penalty(
    seller_id: ExternalId,
    body: PenaltyIn,
    op: Annotated[Operation, Depends(operation_for(Role.IP_STAFF, Role.ADMIN))],
) -> Response:
    """A strike: deducts points; at zero points or the year's strike limit the seller is frozen."""
    policies = op.parts.settings.policies
    return op.run(
        body,
        lambda conn, actor, now: (
            201,
            penalize(
                conn, actor, now, policies, seller_id=seller_id, points=body.points, reason=body.reason,
                finding_id=body.finding_id,
            ),
        ),
    )  # fmt: skip


class FreezeIn(Strict):
    reason: Reason


STAFF = (Role.CP_AGENT, Role.CP_SUPERVISOR, Role.IP_STAFF, Role.FINANCE, Role.LEGAL, Role.ADMIN)


@router.get("/{seller_id}")
def read_seller(
    seller_id: ExternalId,
    _: Annotated[Principal, Depends(require(*STAFF))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    """Balances per currency (escrowed, held, payable, frozen, deposit, owed), freeze state, strike points."""
    with parts.engine.connect() as conn:
        view = seller_view(conn, seller_id)
        view["points"] = standing(conn, seller_id, parts.clock.now(), parts.settings.policies)
        return json_response(200, view)


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
