"""Exact money conversions between JSON minor units and ISO 20022 decimal strings.

The simulator is a black box for the service, so it keeps its own copy of these rules
instead of importing `escrow.money`: a misunderstanding of minor units or exponents then
shows up as a failing test rather than as a bug shared by both sides. No float anywhere:
decimal strings are parsed with `Decimal` and scaled with integer powers of ten.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from iso4217 import Currency

AMOUNT_MINOR_MAX = 10**15
"""Largest amount accepted in minor units (the service's documented limit)."""

_DECIMAL_RE = re.compile(r"^[0-9]{1,18}(\.[0-9]{1,18})?$")


class MoneyError(ValueError):
    """An amount or currency the simulator refuses; `code` is a stable ISO-like reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def currency_exponent(currency: str) -> int:
    """Return the ISO 4217 minor-unit exponent of `currency` (JPY 0, EUR 2, KWD 3).

    Raises MoneyError("unknown_currency") for a code that is not an ISO 4217 currency with
    minor units (gold, SDR and test codes have none and cannot be paid out).
    """
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise MoneyError("unknown_currency", f"{currency!r} is not an ISO 4217 code")
    try:
        exponent = Currency(currency).exponent
    except ValueError as exc:
        raise MoneyError("unknown_currency", f"{currency!r} is not an ISO 4217 code") from exc
    if exponent is None:
        raise MoneyError("unknown_currency", f"{currency!r} has no minor unit")
    return exponent


def minor_to_decimal_str(amount_minor: int, currency: str) -> str:
    """Format minor units as the decimal string ISO 20022 expects, e.g. (1234, KWD) -> 1.234."""
    exponent = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{exponent}d}"


def decimal_str_to_minor(text: str, currency: str) -> int:
    """Parse an ISO 20022 amount string into minor units of `currency`, exactly.

    Trailing zeros beyond the exponent are accepted ("500.00" JPY is 500 yen) because they
    do not change the value; a non-zero digit beyond the exponent ("5.01" JPY) raises
    MoneyError("invalid_amount") instead of being rounded, since rounding a payment
    instruction silently would move a different amount than was instructed.
    """
    exponent = currency_exponent(currency)
    stripped = text.strip()
    if not _DECIMAL_RE.match(stripped):
        raise MoneyError("invalid_amount", f"{text!r} is not a plain decimal amount")
    try:
        value = Decimal(stripped)
    except InvalidOperation as exc:  # unreachable after the regex, kept as a guard
        raise MoneyError("invalid_amount", f"{text!r} is not a decimal") from exc
    scaled = value.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise MoneyError(
            "invalid_amount",
            f"{text} has more decimals than {currency} allows ({exponent})",
        )
    return int(scaled)


def check_amount_minor(amount_minor: int) -> None:
    """Raise MoneyError unless 0 < amount_minor <= AMOUNT_MINOR_MAX."""
    if amount_minor <= 0:
        raise MoneyError("zero_amount", "amount must be positive")
    if amount_minor > AMOUNT_MINOR_MAX:
        raise MoneyError("amount_too_large", f"amount exceeds {AMOUNT_MINOR_MAX} minor units")
