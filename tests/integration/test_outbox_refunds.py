"""Ordinary refunds delivered through the outbox, on both databases, against the in-process simulator."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.integration.conftest import Api
from tests.integration.test_outbox_world import (
    BUYER_IBAN,
    CARD_SETTLE_S,
    SETTLE_S,
    World,
    assert_outbox_invariants,
    balance,
)


@pytest.fixture
def w(api: Api) -> World:
    return World(api)


def refund_row(w: World, refund_id: str) -> dict[str, object]:
    with w.api.parts.engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM order_refunds WHERE id = :i"), {"i": refund_id}).mappings().one())


class TestOrdinaryRefunds:
    def test_card_refund_written_with_its_instruction_then_succeeds(self, w: World) -> None:
        """The refund's ledger entry and outbox row commit together; the acquirer's webhook settles it."""
        w.paid_order(1, 10_000)
        refund_id = w.refund(1)
        with w.api.parts.engine.connect() as conn:
            ins = conn.execute(text("SELECT * FROM outbox_instructions")).mappings().one()
        assert ins["key"] == refund_id and ins["rail"] == "card" and ins["state"] == "pending"
        assert balance(w.api, "in_transit:refunds") == 10_000
        assert_outbox_invariants(w)
        w.work()
        assert w.books()["executions"] == {f"card:{refund_id}": 1}
        w.advance(CARD_SETTLE_S + 1)
        assert refund_row(w, refund_id)["status"] == "succeeded"
        assert balance(w.api, "in_transit:refunds") == 0 and balance(w.api, "clearing:card") == 0
        assert_outbox_invariants(w)

    def test_declined_card_refund_puts_the_money_back_in_escrow(self, w: World) -> None:
        """Magic 97: declined at settlement → refund failed, the order's escrow restored."""
        w.paid_order(1, 10_097)
        refund_id = w.refund(1)
        w.work()
        w.advance(CARD_SETTLE_S + 1)
        assert refund_row(w, refund_id)["status"] == "failed"
        order = w.call("checkout", "GET", "/v1/orders/o-1").json()
        assert order["balances"]["escrowed"] == 10_097 and order["balances"]["refunded"] == 0
        assert_outbox_invariants(w)

    def test_bank_refund_waits_for_the_buyers_account_then_is_booked(self, w: World) -> None:
        """A bank_transfer order is refunded by credit transfer to the buyer's registered account."""
        w.paid_order(1, 10_000, method="bank_transfer")
        refund_id = w.refund(1)
        w.work()
        with w.api.parts.engine.connect() as conn:
            ins = conn.execute(text("SELECT state, last_error FROM outbox_instructions")).one()
        assert ins.state == "pending" and "no payout account" in ins.last_error
        w.account("b-1", iban=BUYER_IBAN)
        w.advance(120)
        w.work()
        w.advance(SETTLE_S + 1)
        assert refund_row(w, refund_id)["status"] == "succeeded"
        assert w.books()["executions"] == {f"bank:{refund_id}": 1}
        assert_outbox_invariants(w)

    def test_lost_response_then_status_query(self, w: World) -> None:
        """Magic 98 (timeout after booking): the retry asks the acquirer by refund id; executed once."""
        w.paid_order(1, 10_098)
        refund_id = w.refund(1)
        w.work()
        w.advance(60)
        w.work()
        w.advance(CARD_SETTLE_S + 1)
        assert refund_row(w, refund_id)["status"] == "succeeded"
        assert w.books()["executions"] == {f"card:{refund_id}": 1}
        assert_outbox_invariants(w)

    def test_webhook_lost_status_poll_completes(self, w: World) -> None:
        """Without any webhook, the worker's status poll still brings the outcome (at least once)."""
        w.forward = False
        w.paid_order(1, 10_000)
        refund_id = w.refund(1)
        w.work()
        w.advance(w.policy.poll.total_seconds() + 1)
        w.work()
        assert refund_row(w, refund_id)["status"] == "succeeded"
        assert_outbox_invariants(w)


def test_a_refund_declined_after_confirmation_goes_to_the_seller_not_to_dead_escrow(w: World) -> None:
    """Refund in flight, buyer confirms, refund declined: the money follows the confirmation (payable)."""
    w.paid_order(1, 10_097)
    hold = {"order_id": "o-1", "amount": {"amount": 3_000, "currency": "EUR"}, "reason": "suspected"}
    assert w.call("ip_staff", "POST", "/v1/holds", hold).status_code == 201
    refund_id = w.refund(1)  # the 7,097 of unheld escrow; magic 97: declined at settlement
    w.work()
    assert w.call("checkout", "POST", "/v1/orders/o-1/confirm").status_code == 200
    w.advance(CARD_SETTLE_S + 1)
    assert refund_row(w, refund_id)["status"] == "failed"
    order = w.call("checkout", "GET", "/v1/orders/o-1").json()
    assert order["balances"] == {"escrowed": 0, "held": 0, "released": 7_097, "refunded": 0, "frozen": 3_000}
    assert balance(w.api, "order:o-1:escrow") == 0
    assert balance(w.api, "seller:s-1:payable") == 7_097 and balance(w.api, "seller:s-1:frozen") == 3_000
    assert_outbox_invariants(w)
