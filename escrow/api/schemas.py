"""Request and response shapes shared by the routers (DESIGN §5 "Shapes clients rely on")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

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


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00:00-05:00 is in year 10000 in UTC
        raise ValueError("is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
"""A timestamp with an explicit offset, converted to UTC on the way in: DESIGN §5 says every
timestamp is RFC 3339 UTC, and a client's offset must not reach a stored event or audit record."""
