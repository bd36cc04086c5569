"""Journal entries are checked before they reach the database."""

from __future__ import annotations

import pytest

from escrow.errors import InvalidInput, UnbalancedEntry
from escrow.ledger import Entry, Posting, pieces, rule_for, transfer
from escrow.limits import AMOUNT_MINOR_MAX, HOT_ACCOUNT_SHARDS, POSTINGS_PER_ENTRY_MAX
from escrow.money import Money


def eur(n: int) -> Money:
    return Money(n, "EUR")


class TestEntry:
    def test_unbalanced_entry_is_refused(self) -> None:
        """Postings that do not sum to zero are refused with unbalanced_entry."""
        with pytest.raises(UnbalancedEntry) as err:
            Entry("x", (Posting("a:1", eur(-100)), Posting("b:1", eur(99))))
        assert err.value.code == "unbalanced_entry"

    def test_balance_is_per_currency(self) -> None:
        """EUR cannot offset USD: each currency must balance on its own."""
        with pytest.raises(UnbalancedEntry):
            Entry("x", (Posting("a:1", eur(-100)), Posting("b:1", Money(100, "USD"))))
        Entry(
            "x",
            (
                Posting("a:1", eur(-100)),
                Posting("b:1", eur(100)),
                Posting("a:1", Money(-5, "USD")),
                Posting("c:1", Money(5, "USD")),
            ),
        )

    @pytest.mark.parametrize("n", [0, 1, POSTINGS_PER_ENTRY_MAX + 2])
    def test_posting_count_is_bounded(self, n: int) -> None:
        """An entry has between two and POSTINGS_PER_ENTRY_MAX postings."""
        legs = [Posting(f"a:{i}", eur(1 if i % 2 else -1)) for i in range(n)]
        with pytest.raises(InvalidInput):
            Entry("x", tuple(legs))

    def test_zero_posting_is_refused(self) -> None:
        """A posting must move money."""
        with pytest.raises(InvalidInput):
            Entry("x", (Posting("a:1", eur(0)), Posting("b:1", eur(0))))

    @pytest.mark.parametrize("name", ["", "A:b", "order:", "order:x y", "order:" + "x" * 300, "order:x;drop"])
    def test_account_names_are_validated(self, name: str) -> None:
        """Malformed account names never reach SQL."""
        with pytest.raises(InvalidInput):
            transfer("x", name, "b:1", eur(1))

    @pytest.mark.parametrize(
        "source, destination, amount",
        [("order:1:escrow", "order:1:held", 500), ("clearing:card", "seller:s-1:payable", 10**15)],
    )
    def test_transfer_equals_the_general_entry(self, source: str, destination: str, amount: int) -> None:
        """`transfer` takes a shortcut past Entry's checks; what it builds must be the same entry."""
        fast = transfer("hold", source, destination, eur(amount), memo="m")
        general = Entry("hold", (Posting(source, eur(-amount)), Posting(destination, eur(amount))), memo="m")
        assert fast == general
        assert fast.net == general.net
        assert fast.reverses is None
        assert fast.postings[0].amount == Money(-amount, "EUR")

    @pytest.mark.parametrize("kind", ["", "k" * 65])
    def test_transfer_checks_the_kind(self, kind: str) -> None:
        """The shortcut keeps the kind's bounds."""
        with pytest.raises(InvalidInput):
            transfer(kind, "order:1:escrow", "order:1:held", eur(1))

    def test_transfer_to_the_same_account_is_refused(self) -> None:
        """It would move nothing; refused before it reaches the ledger."""
        with pytest.raises(InvalidInput, match="two different accounts"):
            transfer("x", "order:1:escrow", "order:1:escrow", eur(1))

    def test_reversal_negates_every_leg(self) -> None:
        """A reversal moves the same amounts the other way and names the original."""
        entry = transfer("hold", "order:1:escrow", "order:1:held", eur(500))
        back = entry.reversal("ent_1")
        assert back.reverses == "ent_1"
        assert [p.amount.amount_minor for p in back.postings] == [500, -500]

    def test_net_cancels_legs_on_one_account(self) -> None:
        """Two legs on one account net out before they touch its balance row."""
        entry = Entry(
            "x",
            (Posting("a:1", eur(-100)), Posting("a:1", eur(40)), Posting("b:1", eur(60))),
        )
        assert entry.net == {("a:1", "EUR"): -60, ("b:1", "EUR"): 60}


class TestChart:
    def test_platform_pass_through_accounts_are_sharded_and_unguarded(self) -> None:
        """Every order touches clearing and in-transit accounts, so they are split into shards."""
        for name in ("clearing:card", "clearing:bank", "in_transit:payouts", "in_transit:refunds"):
            assert rule_for(name).shards == HOT_ACCOUNT_SHARDS
            assert not rule_for(name).non_negative

    def test_liabilities_are_guarded_and_receivables_are_not(self) -> None:
        """Escrow, held, payable, frozen, deposit and the fund never go negative; what a seller owes may."""
        for name in (
            "order:1:escrow",
            "order:1:held",
            "seller:s:payable",
            "seller:s:frozen",
            "seller:s:deposit",
            "platform:guarantee_fund",
            "claimant:c:payable",
        ):
            assert rule_for(name).non_negative and rule_for(name).shards == 1
        assert not rule_for("seller:s:owed").non_negative


def test_pieces_split_a_balance_into_amounts_a_posting_may_carry() -> None:
    """Largest first, each at most AMOUNT_MINOR_MAX, summing to the whole; nothing to split is refused."""
    assert pieces(1) == [1]
    assert pieces(AMOUNT_MINOR_MAX) == [AMOUNT_MINOR_MAX]
    assert pieces(2 * AMOUNT_MINOR_MAX + 5) == [AMOUNT_MINOR_MAX, AMOUNT_MINOR_MAX, 5]
    assert sum(pieces(2**63 - 1)) == 2**63 - 1 and len(pieces(2**63 - 1)) == 9_224
    with pytest.raises(InvalidInput):
        pieces(0)
