"""Random postings and reversals, with every ledger invariant checked after each step."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import text

from escrow.errors import IllegalTransition, InsufficientFunds
from escrow.ledger import Entry, Ledger, Posting, rule_for
from escrow.money import Money
from tests.conftest import TestDB
from tests.integration.test_ledger import assert_books_sound

NOW = datetime(2026, 11, 29, tzinfo=UTC)
ACCOUNTS = [
    "clearing:card",
    "in_transit:payouts",
    "seller:s1:owed",
    "order:o1:escrow",
    "order:o1:held",
    "order:o2:escrow",
    "seller:s1:payable",
    "seller:s1:frozen",
    "platform:guarantee_fund",
]
CURRENCIES = ["EUR", "JPY", "KWD"]

legs = st.lists(
    st.tuples(st.sampled_from(ACCOUNTS), st.integers(min_value=1, max_value=10**6)),
    min_size=1,
    max_size=4,
)


def run_ledger_machine(db: TestDB) -> None:
    class LedgerMachine(RuleBasedStateMachine):
        """A model of the books next to the real ledger; they must always agree."""

        def __init__(self) -> None:
            super().__init__()
            self.model: dict[tuple[str, str], int] = {}
            self.entries: list[tuple[str, Entry]] = []
            self.reversed: set[str] = set()

        @initialize()
        def empty_books(self) -> None:
            db.reset()

        def _apply(self, entry: Entry) -> str | None:
            after = dict(self.model)
            for key, delta in entry.net.items():
                after[key] = after.get(key, 0) + delta
            expect_refusal = any(v < 0 and rule_for(a).non_negative for (a, _), v in after.items())
            before = db.counts()
            try:
                with db.engine.begin() as conn:
                    posted = Ledger(conn).post(entry, now=NOW)
            except InsufficientFunds:
                assert expect_refusal, "refused an entry the model accepts"
                assert db.counts() == before, "a refused entry wrote something"
                return None
            assert not expect_refusal, "accepted an entry that drives a guarded account negative"
            self.model = after
            return posted.id

        @rule(currency=st.sampled_from(CURRENCIES), sources=legs, destinations=legs)
        def post_entry(
            self, currency: str, sources: list[tuple[str, int]], destinations: list[tuple[str, int]]
        ) -> None:
            """Post a random balanced entry: several debits, credits that sum to the same total."""
            total = sum(a for _, a in sources)
            credit_total = sum(a for _, a in destinations)
            postings = [Posting(acc, Money(-amt, currency)) for acc, amt in sources]
            # Scale the credits onto the debit total; the last credit takes the remainder.
            credits = [amt * total // credit_total for _, amt in destinations]
            credits[-1] += total - sum(credits)
            postings += [
                Posting(acc, Money(c, currency)) for (acc, _), c in zip(destinations, credits, strict=True) if c
            ]
            entry = Entry("random", tuple(postings))
            if not entry.net:
                return
            entry_id = self._apply(entry)
            if entry_id is not None:
                self.entries.append((entry_id, entry))

        @rule(currency=st.sampled_from(CURRENCIES), account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 10**7))
        def fund(self, currency: str, account: str, amount: int) -> None:
            """Money arrives from outside through a clearing account."""
            entry = Entry(
                "fund", (Posting("clearing:card", Money(-amount, currency)), Posting(account, Money(amount, currency)))
            )
            if entry.net:
                entry_id = self._apply(entry)
                if entry_id is not None:
                    self.entries.append((entry_id, entry))

        @precondition(lambda self: bool(self.entries))
        @rule(pick=st.integers(min_value=0))
        def reverse(self, pick: int) -> None:
            """Reverse a posted entry: allowed once, refused when the money has moved on."""
            entry_id, entry = self.entries[pick % len(self.entries)]
            reversal = entry.reversal(entry_id)
            after = dict(self.model)
            for key, delta in reversal.net.items():
                after[key] = after.get(key, 0) + delta
            expect_refusal = any(v < 0 and rule_for(a).non_negative for (a, _), v in after.items())
            try:
                with db.engine.begin() as conn:
                    Ledger(conn).reverse(entry_id, now=NOW, reason="test")
            except IllegalTransition:
                assert entry_id in self.reversed
                return
            except InsufficientFunds:
                assert expect_refusal and entry_id not in self.reversed
                return
            assert entry_id not in self.reversed and not expect_refusal
            self.reversed.add(entry_id)
            self.model = after

        @invariant()
        def books_match_model_and_are_sound(self) -> None:
            with db.engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT account, currency, SUM(balance) FROM ledger_balances GROUP BY account, currency")
                ).all()
            actual = {(a, c): int(b) for a, c, b in rows if int(b) != 0}
            assert actual == {k: v for k, v in self.model.items() if v != 0}
            assert_books_sound(db)

    machine_settings = settings(
        max_examples=25 if db.kind == "sqlite" else 15,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    LedgerMachine.TestCase.settings = machine_settings
    LedgerMachine.TestCase().runTest()


@pytest.mark.timeout(600)
def test_random_postings_and_reversals_keep_every_invariant(db: TestDB) -> None:
    """Balances match a model, never go negative where guarded, equal their postings, and balance."""
    run_ledger_machine(db)
