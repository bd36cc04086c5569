"""Builders and invariant checks shared by the checkout tests."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import text

from escrow.ledger import Ledger
from tests.integration.conftest import Api
from tests.integration.test_ledger import assert_books_sound


def an_order(n: int | str = 1, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": f"o-{n}",
        "buyer_id": "b-1",
        "seller_id": "s-1",
        "listing_id": f"l-{n}",
        "title": "Leather wallet, brown",
        "amount": {"amount": 10_000, "currency": "EUR"},
        "payment": {"method": "card", "reference": f"pay-{n}"},
        "jurisdiction": "EU",
    }
    body.update(overrides)
    return body


def assert_conserved(api: Api) -> None:
    """No money created or lost: per order, per seller, per platform account, and the trial balance."""
    engine = api.parts.engine
    with engine.connect() as conn:
        ledger = Ledger(conn)
        orders = conn.execute(text("SELECT * FROM orders")).mappings().all()
        per_seller: dict[tuple[str, str], int] = defaultdict(int)
        refunded: dict[str, int] = defaultdict(int)
        paid: dict[tuple[str, str], int] = defaultdict(int)
        for o in orders:
            parts = o["escrowed"] + o["held"] + o["frozen"] + o["released"] + o["refunded"]
            assert parts == o["amount"], o
            assert ledger.balance(f"order:{o['order_id']}:escrow", o["currency"]) == o["escrowed"], o
            assert ledger.balance(f"order:{o['order_id']}:held", o["currency"]) == o["held"], o
            live = conn.execute(
                text(
                    "SELECT COALESCE(SUM(amount), 0) FROM holds"
                    " WHERE order_id = :o AND status IN ('active', 'contested')"
                ),
                {"o": o["order_id"]},
            ).scalar_one()
            if o["confirmed_at"] is None:
                assert live == o["held"], o
            else:
                assert live <= o["frozen"], o
            per_seller[(o["seller_id"], o["currency"])] += o["frozen"] + o["released"]
            refunded[o["currency"]] += o["refunded"]
            paid[("card" if o["payment_method"] == "card" else "bank", o["currency"])] += o["amount"]
        for (seller, currency), expected in per_seller.items():
            held_by_seller = ledger.balance(f"seller:{seller}:payable", currency) + ledger.balance(
                f"seller:{seller}:frozen", currency
            )
            assert held_by_seller == expected, (seller, currency)
        for currency, amount in refunded.items():
            assert ledger.balance("in_transit:refunds", currency) == amount
        for (rail, currency), amount in paid.items():
            assert ledger.balance(f"clearing:{rail}", currency) == -amount
    assert_books_sound(api.db)
