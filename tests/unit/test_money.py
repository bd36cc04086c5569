"""Money: integer minor units of a real ISO 4217 currency, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escrow.errors import InvalidMoney
from escrow.limits import AMOUNT_MINOR_MAX
from escrow.money import Money, allocate, currency_exponent


class TestParse:
    def test_accepts_integer_minor_units(self) -> None:
        """The wire shape with an int amount and a known code parses."""
        assert Money.parse({"amount": 1999, "currency": "EUR"}) == Money(1999, "EUR")

    @pytest.mark.parametrize(
        "raw",
        [
            {"amount": 10.0, "currency": "EUR"},
            {"amount": 10.5, "currency": "EUR"},
            {"amount": "1000", "currency": "EUR"},
            {"amount": True, "currency": "EUR"},
            {"amount": None, "currency": "EUR"},
            {"amount": 100, "currency": "eur"},
            {"amount": 100, "currency": "ZZZ"},
            {"amount": 100, "currency": "XAU"},
            {"amount": 100, "currency": 978},
            {"amount": 100, "currency": ["EUR"]},  # unhashable: InvalidMoney, not the cache's TypeError
            {"amount": 100, "currency": {"code": "EUR"}},
            {"amount": 0, "currency": "EUR"},
            {"amount": -1, "currency": "EUR"},
            {"amount": AMOUNT_MINOR_MAX + 1, "currency": "EUR"},
            {"amount": 100},
            {"amount": 100, "currency": "EUR", "extra": 1},
            [100, "EUR"],
            "100 EUR",
        ],
    )
    def test_refuses_anything_else(self, raw: object) -> None:
        """Floats, strings, booleans, unknown or non-currency codes, non-positive and oversized amounts are refused."""
        with pytest.raises(InvalidMoney):
            Money.parse(raw)

    def test_zero_only_when_allowed(self) -> None:
        """Zero is refused by default and accepted when the caller allows it."""
        assert Money.parse({"amount": 0, "currency": "JPY"}, allow_zero=True).amount_minor == 0

    def test_upper_bound_is_inclusive(self) -> None:
        """Exactly 10^15 minor units is the largest amount accepted."""
        assert Money.parse({"amount": AMOUNT_MINOR_MAX, "currency": "EUR"}).amount_minor == AMOUNT_MINOR_MAX


class TestExponent:
    @pytest.mark.parametrize(("code", "exponent"), [("EUR", 2), ("JPY", 0), ("KWD", 3), ("CLF", 4)])
    def test_exponents_come_from_the_iso_table(self, code: str, exponent: int) -> None:
        """Exponents are ISO 4217's, including 0 and 3 decimal currencies."""
        assert currency_exponent(code) == exponent

    def test_display_uses_the_exponent(self) -> None:
        """Formatting places the decimal point per currency."""
        assert str(Money(1234, "KWD")) == "1.234 KWD"
        assert str(Money(1234, "JPY")) == "1234 JPY"
        assert str(Money(-5, "EUR")) == "-0.05 EUR"

    def test_no_arithmetic_across_currencies(self) -> None:
        """Adding EUR to USD is an error: there is no FX inside the service."""
        with pytest.raises(InvalidMoney):
            _ = Money(1, "EUR") + Money(1, "USD")


class TestAllocate:
    @given(
        total=st.integers(min_value=0, max_value=AMOUNT_MINOR_MAX),
        weights=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=20).filter(any),
    )
    def test_parts_sum_to_total_and_stay_within_one_unit(self, total: int, weights: list[int]) -> None:
        """A pro-rata split never creates or loses a unit and is fair to within one unit."""
        parts = allocate(total, weights)
        assert sum(parts) == total
        weight_sum = sum(weights)
        for part, weight in zip(parts, weights, strict=True):
            exact_floor = total * weight // weight_sum
            assert exact_floor <= part <= exact_floor + 1

    def test_remainder_goes_to_largest_fraction_first(self) -> None:
        """100 split 1:1:1 gives 34/33/33 — the remainder to the earliest tie."""
        assert allocate(100, [1, 1, 1]) == [34, 33, 33]


@pytest.mark.parametrize("amount", [1, -1, AMOUNT_MINOR_MAX, -AMOUNT_MINOR_MAX])
def test_negation_is_an_ordinary_money(amount: int) -> None:
    """Negation skips the checks (a valid amount negated is valid); the value must not differ."""
    negated = -Money(amount, "JPY")
    assert negated == Money(-amount, "JPY")
    assert type(negated.amount_minor) is int
    assert hash(negated) == hash(Money(-amount, "JPY"))
