"""Finance's view of the ledger: the trial balance and single account balances."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import Response

from escrow.api.deps import Components, components, json_response, require
from escrow.auth import Principal, Role
from escrow.ledger import Ledger, validate_account

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])
Finance = Annotated[Principal, Depends(require(Role.FINANCE, Role.ADMIN))]


@router.get("/trial-balance")
def trial_balance(_: Finance, parts: Annotated[Components, Depends(components)]) -> Response:
    with parts.engine.connect() as conn:
        lines = Ledger(conn).trial_balance()
    return json_response(
        200,
        {
            "balanced": all(line.total_debits == line.total_credits for line in lines),
            "currencies": [
                {"currency": line.currency, "total_debits": line.total_debits, "total_credits": line.total_credits}
                for line in lines
            ],
        },
    )


@router.get("/accounts/{account}")
def account(account: str, _: Finance, parts: Annotated[Components, Depends(components)]) -> Response:
    """Balances of one account in every currency it holds (minor units)."""
    validate_account(account)
    with parts.engine.connect() as conn:
        balances = Ledger(conn).balances([account])
    return json_response(
        200,
        {"account": account, "balances": [{"amount": b, "currency": c} for (_, c), b in sorted(balances.items())]},
    )
