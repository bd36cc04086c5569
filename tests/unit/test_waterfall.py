"""The waterfall's decisions from values alone: recovery order, oldest first, confiscation, claims."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escrow.domain.waterfall import Take, allocate_claims, pay_oldest_first, plan_recovery, split_confiscation
from escrow.errors import InvalidInput

SOURCES = ["order_held", "frozen", "payable", "deposit"]


class TestPlanRecovery:
    def test_takes_sources_in_order_until_paid(self) -> None:
        """Each source is emptied before the next is touched; nothing beyond what is outstanding."""
        plan = plan_recovery(100, [("order_held", 30), ("frozen", 0), ("payable", 50), ("deposit", 500)])
        assert plan == [Take("order_held", 30), Take("payable", 50), Take("deposit", 20)]

    def test_short_of_money_takes_everything_available(self) -> None:
        assert plan_recovery(100, [("frozen", 10), ("deposit", 5)]) == [Take("frozen", 10), Take("deposit", 5)]

    def test_negative_availability_counts_as_nothing(self) -> None:
        """A source reported negative (more tied than held) is skipped, not subtracted."""
        assert plan_recovery(10, [("frozen", -5), ("payable", 20)]) == [Take("payable", 10)]

    def test_nothing_outstanding_takes_nothing(self) -> None:
        assert plan_recovery(0, [("payable", 20)]) == []

    def test_negative_outstanding_is_refused(self) -> None:
        with pytest.raises(InvalidInput):
            plan_recovery(-1, [])

    @given(
        st.integers(0, 10**15),
        st.lists(st.tuples(st.sampled_from(SOURCES), st.integers(-(10**6), 10**15)), max_size=4),
    )
    def test_never_takes_twice_or_too_much(self, outstanding: int, available: list[tuple[str, int]]) -> None:
        """Takes are positive, within each source, and sum to min(outstanding, what is available)."""
        plan = plan_recovery(outstanding, available)
        assert all(t.amount > 0 for t in plan)
        assert sum(t.amount for t in plan) == min(outstanding, sum(max(a, 0) for _, a in available))
        for take, (source, amount) in zip(plan, [x for x in available if x[1] > 0], strict=False):
            assert take.source == source and take.amount <= amount


class TestConfiscation:
    def test_receivables_oldest_first_then_the_fund(self) -> None:
        split = split_confiscation(100, [30, 50, 40])
        assert split.to_receivables == (30, 50, 20) and split.to_guarantee_fund == 0
        rest = split_confiscation(100, [30])
        assert rest.to_receivables == (30,) and rest.to_guarantee_fund == 70

    @given(st.integers(0, 10**15), st.lists(st.integers(0, 10**15), max_size=6))
    def test_split_is_exact(self, amount: int, owed: list[int]) -> None:
        """Every minor unit confiscated lands somewhere, and no receivable is overpaid."""
        split = split_confiscation(amount, owed)
        assert sum(split.to_receivables) + split.to_guarantee_fund == amount
        assert all(0 <= p <= o for p, o in zip(split.to_receivables, owed, strict=True))

    def test_negative_refused(self) -> None:
        with pytest.raises(InvalidInput):
            pay_oldest_first(-1, [1])


class TestClaims:
    def test_pro_rata_by_awarded_amount(self) -> None:
        """Pro rata with the largest remainder rule: parts sum exactly to what is shared."""
        assert allocate_claims(100, [300, 100], "pro_rata") == [75, 25]
        assert allocate_claims(10, [1, 1, 1], "pro_rata") == [1, 1, 1]  # never more than awarded
        assert allocate_claims(2, [1, 1, 1], "pro_rata") == [1, 1, 0]

    def test_first_awarded_first_paid(self) -> None:
        assert allocate_claims(100, [80, 50], "first_awarded") == [80, 20]

    def test_no_claims_or_nothing_to_share(self) -> None:
        assert allocate_claims(100, [], "pro_rata") == []
        assert allocate_claims(0, [5, 5], "pro_rata") == [0, 0]

    @given(st.integers(0, 10**12), st.lists(st.integers(0, 10**12), min_size=1, max_size=6),
           st.sampled_from(["pro_rata", "first_awarded"]))  # fmt: skip
    def test_never_more_than_awarded_or_available(self, total: int, awarded: list[int], mode: str) -> None:
        parts = allocate_claims(total, awarded, mode)  # type: ignore[arg-type]
        assert sum(parts) == min(total, sum(awarded))
        assert all(0 <= p <= a for p, a in zip(parts, awarded, strict=True))
