"""Parties: the payout account (IBAN/BIC, validated, stored encrypted, shown masked)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field, StrictStr
from starlette.responses import Response

from escrow.api.deps import Components, Operation, components, json_response, operation_for, require, visible
from escrow.api.schemas import NO_NUL, Strict
from escrow.auth import Principal, Role
from escrow.outbox import Rails
from escrow.service.payout_accounts import get_payout_account, put_payout_account

router = APIRouter(prefix="/v1/parties", tags=["parties"])
PartyId = Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]
WHO = (Role.FINANCE, Role.ADMIN, Role.RIGHTS_HOLDER)


class PayoutAccountIn(Strict):
    holder_name: Annotated[StrictStr, Field(min_length=1, max_length=140, pattern=r"^[^\x00-\x1f\x7f]+$")]
    iban: Annotated[StrictStr, Field(min_length=5, max_length=64, pattern=NO_NUL)]
    bic: Annotated[StrictStr, Field(min_length=8, max_length=14, pattern=NO_NUL)] | None = None

    def __repr__(self) -> str:  # never print a full account number
        return f"PayoutAccountIn(holder_name={self.holder_name!r}, iban='***', bic={self.bic!r})"


def rails_of(parts: Components) -> Rails:
    """The rails bootstrap built into the components."""
    rails = parts.rails
    if rails is None:  # pragma: no cover  # bootstrap always builds them
        raise RuntimeError("components built without rails")
    return rails


@router.put("/{party_id}/payout-account")
def put_account(
    party_id: PartyId,
    body: PayoutAccountIn,
    op: Annotated[Operation, Depends(operation_for(*WHO))],
) -> Response:
    """Create or replace the party's payout account; a rights holder only for its own party (else 404)."""
    visible(op.principal, party_id, f"party {party_id}")
    cipher = rails_of(op.parts).cipher
    return op.run(
        body,
        lambda conn, actor, now: (
            200,
            put_payout_account(
                conn, actor, now, cipher, party_id=party_id, holder_name=body.holder_name, iban=body.iban, bic=body.bic
            ),
        ),
    )


@router.get("/{party_id}/payout-account")
def get_account(
    party_id: PartyId,
    principal: Annotated[Principal, Depends(require(*WHO))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    """The party's payout account, masked."""
    visible(principal, party_id, f"party {party_id}")
    with parts.engine.connect() as conn:
        return json_response(200, get_payout_account(conn, party_id))
