"""Request and response shapes shared by the routers (DESIGN §5 "Shapes clients rely on")."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from escrow.errors import InvalidMoney
from escrow.limits import AMOUNT_MINOR_MAX, REASON_CHARS_MAX
from escrow.money import Money, check_currency


class Strict(BaseModel):
    """Unknown fields are refused: a typo in a field name must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MoneyIn(Strict):
    """`{"amount": <int minor units>, "currency": "<ISO 4217>"}`; floats and strings refused."""

    amount: Annotated[StrictInt, Field(gt=0, le=AMOUNT_MINOR_MAX)]
    currency: StrictStr

    @field_validator("currency")
    @classmethod
    def _iso4217(cls, value: str) -> str:
        try:
            return check_currency(value)
        except InvalidMoney as exc:
            raise ValueError(exc.detail) from None

    def money(self) -> Money:
        return Money(self.amount, self.currency)


def money_out(money: Money) -> dict[str, Any]:
    return money.to_wire()


NO_NUL = r"^[^\x00]*$"
"""Free text must not hold NUL: PostgreSQL text cannot store it, so it is invalid input (422), not a 500."""

Reason = Annotated[StrictStr, Field(min_length=1, max_length=REASON_CHARS_MAX, pattern=NO_NUL)]
ExternalId = Annotated[StrictStr, Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.\-]+$")]
