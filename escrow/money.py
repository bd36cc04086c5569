"""Money as integer minor units of an ISO 4217 currency.

Why a value type and not bare ints: every amount that crosses a boundary (HTTP, database,
adapter) must carry its currency, and a float must never sneak in. Exponents come from the
maintained `iso4217` package, not from a hand-typed table, so KWD (3) and JPY (0) are right.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import iso4217

from escrow.errors import InvalidMoney
from escrow.limits import AMOUNT_MINOR_MAX


def currency_exponent(code: str) -> int:
    """Decimal places of `code`; raises InvalidMoney for unknown codes and non-currencies.

    Codes without an exponent (XAU, XDR, XXX, …) are precious metals, units of account or
    placeholders: no buyer pays with them, so they are refused rather than guessed. Fund
    codes (BOV, CLF, USN, …) have an exponent in the list and pass: they are ISO 4217
    currencies, and which ones a payment may use is the payment provider's to decide.
    """
    # Checked before the cache, which would fail on an unhashable value with a TypeError.
    if not isinstance(code, str) or len(code) != 3 or not code.isascii() or not code.isupper():
        raise InvalidMoney(f"currency must be a 3-letter upper-case ISO 4217 code, got {code!r}")
    return _exponent(code)


@lru_cache(maxsize=512)
def _exponent(code: str) -> int:
    try:
        exponent = iso4217.Currency(code).exponent
    except ValueError:
        raise InvalidMoney(f"unknown ISO 4217 currency {code!r}") from None
    if exponent is None:
        raise InvalidMoney(f"{code} is not a currency that can be paid with")
    return int(exponent)


def check_currency(code: Any) -> str:
    """Return `code` if it is a payable ISO 4217 currency, else raise InvalidMoney."""
    currency_exponent(code)
    return str(code)


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units; construction validates both fields."""

    amount_minor: int  # integer minor units of `currency`; never float, never Decimal inside
    currency: str  # ISO 4217

    def __post_init__(self) -> None:
        # bool is an int subclass: True must not become one cent.
        if type(self.amount_minor) is not int:
            raise InvalidMoney(f"amount must be an integer number of minor units, got {self.amount_minor!r}")
        if abs(self.amount_minor) > AMOUNT_MINOR_MAX:
            raise InvalidMoney(f"amount exceeds {AMOUNT_MINOR_MAX} minor units")
        check_currency(self.currency)

    @classmethod
    def parse(cls, raw: Any, *, allow_zero: bool = False) -> Money:
        """Parse the wire shape `{"amount": int, "currency": "EUR"}` strictly.

        Refuses floats (even 10.0), numeric strings, booleans, unknown currencies, amounts
        above AMOUNT_MINOR_MAX, negatives, and zero unless `allow_zero`.
        """
        if not isinstance(raw, dict) or set(raw) != {"amount", "currency"}:
            raise InvalidMoney('money must be an object {"amount": <int>, "currency": "<ISO 4217>"}')
        amount = raw["amount"]
        if type(amount) is not int:
            raise InvalidMoney(f"amount must be an integer number of minor units, got {type(amount).__name__}")
        if amount < 0 or (amount == 0 and not allow_zero):
            raise InvalidMoney("amount must be positive" if not allow_zero else "amount must not be negative")
        return cls(amount, check_currency(raw["currency"]))

    def to_wire(self) -> dict[str, Any]:
        return {"amount": self.amount_minor, "currency": self.currency}

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        # The negation of a valid amount is valid (the bound is symmetric): skip the checks,
        # since every transfer negates its amount.
        negated = object.__new__(Money)
        object.__setattr__(negated, "amount_minor", -self.amount_minor)
        object.__setattr__(negated, "currency", self.currency)
        return negated

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise InvalidMoney(f"cannot combine {self.currency} with {other.currency}: no FX here")

    def __str__(self) -> str:
        exp = currency_exponent(self.currency)
        sign = "-" if self.amount_minor < 0 else ""
        units, minor = divmod(abs(self.amount_minor), 10**exp)
        return f"{sign}{units}.{minor:0{exp}d} {self.currency}" if exp else f"{sign}{units} {self.currency}"


def allocate(total_minor: int, weights: list[int]) -> list[int]:
    """Split `total_minor` pro rata to `weights` with the largest-remainder rule.

    The remainder of the integer division goes one unit at a time to the largest fractional
    parts, ties to the earliest weight, so the parts always sum exactly to the total and the
    same inputs always give the same split (a court can recompute it by hand).
    """
    if total_minor < 0 or any(w < 0 for w in weights):
        raise InvalidMoney("allocation needs a non-negative total and weights")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise InvalidMoney("allocation needs at least one positive weight")
    parts = [total_minor * w // weight_sum for w in weights]
    remainders = [total_minor * w % weight_sum for w in weights]
    left = total_minor - sum(parts)
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        parts[i] += 1
    return parts
