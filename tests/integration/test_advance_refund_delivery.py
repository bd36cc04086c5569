"""Advance refunds through the real outbox worker and the simulator, on both databases."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Api
from tests.integration.test_ledger import assert_books_sound
from tests.integration.test_outbox_world import CARD_SETTLE_S, World, balance


@pytest.fixture
def w(api: Api) -> World:
    return World(api)


def advance_refund(w: World, order: int, amount: int) -> dict[str, Any]:
    top_up = {"amount": {"amount": 1_000_000, "currency": "EUR"}, "reference": "fund", "reason": "test"}
    assert w.call("finance", "POST", "/v1/guarantee-fund/top-ups", top_up).status_code == 201
    body = {"order_id": f"o-{order}", "amount": {"amount": amount, "currency": "EUR"}, "reason": "counterfeit"}
    response = w.call("cp_agent", "POST", "/v1/refunds", body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_advance_refund_reaches_the_acquirer_once_and_succeeds(w: World) -> None:
    """The worker delivers the refund-first payment once; the acquirer's webhook marks it succeeded."""
    w.paid_order(1, 10_000)
    refund = advance_refund(w, 1, 4_000)
    # The buyer's own escrowed payment repays the fund at once: the buyer has their money back.
    assert refund["status"] == "submitted" and refund["recovery"]["status"] == "recovered"
    assert [r["source"] for r in refund["recovery"]["recovered"]] == ["order_held"]
    w.work()
    assert w.books()["executions"] == {f"card:{refund['id']}": 1}
    w.advance(CARD_SETTLE_S + 1)
    w.work()
    done = w.call("cp_agent", "GET", f"/v1/refunds/{refund['id']}").json()
    assert done["status"] == "succeeded"
    assert balance(w.api, "in_transit:refunds") == 0 and balance(w.api, "clearing:card") == -10_000 + 4_000
    # The fund's top-up came through clearing:bank from outside the simulator, so the outbox
    # invariant (clearing equals the simulator's books) does not apply; the ledger's does.
    assert_books_sound(w.api.db)


def test_a_declined_advance_refund_is_reversed_and_the_receivable_cancelled(w: World) -> None:
    """Magic 97 (declined at settlement): the fund gets its money back and the seller owes nothing."""
    w.paid_order(1, 10_000)
    refund = advance_refund(w, 1, 4_097)
    w.work()
    w.advance(CARD_SETTLE_S + 1)
    w.work()
    failed = w.call("cp_agent", "GET", f"/v1/refunds/{refund['id']}").json()
    assert failed["status"] == "failed"
    assert failed["recovery"]["status"] == "cancelled"
    assert balance(w.api, "seller:s-1:owed") == 0
    assert balance(w.api, "platform:guarantee_fund") == 1_000_000
    order = w.call("checkout", "GET", "/v1/orders/o-1").json()
    assert order["balances"]["escrowed"] == 10_000 and order["balances"]["refunded"] == 0
    assert balance(w.api, "in_transit:refunds") == 0
    # The fund's top-up came through clearing:bank from outside the simulator, so the outbox
    # invariant (clearing equals the simulator's books) does not apply; the ledger's does.
    assert_books_sound(w.api.db)
