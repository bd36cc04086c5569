"""A hypothesis state machine driving the checkout API; money is conserved after every step."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from escrow.service.holds import expire_due
from tests.integration.checkout_support import an_order, assert_conserved
from tests.integration.conftest import Api

SELLERS = ["s-1", "s-2"]
OK = {200, 201}
REFUSED = {409, 422}


def run_checkout_machine(api: Api) -> None:
    class CheckoutMachine(RuleBasedStateMachine):
        """Random traffic from checkout and staff; every answer is a success or a clean refusal."""

        def __init__(self) -> None:
            super().__init__()
            self.orders: list[str] = []
            self.holds: list[str] = []
            self.count = 0

        @initialize()
        def fresh(self) -> None:
            api.parts.engine.dispose()  # the API's own pool must not keep the old SQLite file open
            api.db.reset()
            api.parts.authenticator.forget_all()
            self.keys = {r: api.key(r) for r in ("checkout", "ip_staff", "cp_supervisor")}
            # A confirmed finding, so that flagged orders are held in full at intake.
            finding = {"kind": "keyword", "brand": "Zorblaxx", "patterns": ["zorblaxx"], "status": "confirmed"}
            assert self.call("ip_staff", "POST", "/v1/findings", finding).status_code == 201
            api.parts.screener.refresh_now()  # type: ignore[attr-defined]

        def call(self, role: str, method: str, path: str, body: Any = None) -> Any:
            response = api.client.request(method, path, json=body, headers=self.keys[role])
            assert response.status_code < 500, response.text
            return response

        def order_body(self, amount: int, seller: str, currency: str, flagged: bool) -> dict[str, Any]:
            self.count += 1
            title = "Zorblaxx replica bag" if flagged else "Leather wallet"
            return an_order(self.count, seller_id=seller, title=title, amount={"amount": amount, "currency": currency})

        def recorded(self, order: dict[str, Any], flagged: bool) -> None:
            """A new order's answer: held in full when flagged, and what a read returns."""
            assert (order["status"] == "held") == flagged
            assert len(order["holds"]) == (1 if flagged else 0)
            assert self.call("checkout", "GET", f"/v1/orders/{order['order_id']}").json() == order
            self.orders.append(order["order_id"])
            self.holds += [h["id"] for h in order["holds"]]

        @rule(
            amount=st.integers(1, 10**9),
            seller=st.sampled_from(SELLERS),
            currency=st.sampled_from(["EUR", "JPY"]),
            flagged=st.booleans(),
        )
        def new_order(self, amount: int, seller: str, currency: str, flagged: bool) -> None:
            response = self.call("checkout", "POST", "/v1/orders", self.order_body(amount, seller, currency, flagged))
            assert response.status_code == 201
            self.recorded(response.json(), flagged)

        @rule(flags=st.lists(st.booleans(), min_size=1, max_size=4), repeat=st.booleans())
        def batch(self, flags: list[bool], repeat: bool) -> None:
            bodies = [self.order_body(1_000 + i, SELLERS[i % 2], "EUR", f) for i, f in enumerate(flags)]
            sent = bodies + bodies[:1] if repeat else bodies
            results = self.call("checkout", "POST", "/v1/orders:batch", {"orders": sent}).json()["data"]
            assert [r["status"] for r in results] == [201] * len(bodies) + ([200] if repeat else [])
            for result, flagged in zip(results, flags, strict=False):
                self.recorded(result["order"], flagged)
            if repeat:
                assert results[-1]["order"] == results[0]["order"]

        @precondition(lambda self: self.orders)
        @rule(pick=st.integers(0), amount=st.one_of(st.none(), st.integers(1, 10**9)), days=st.integers(1, 90))
        def hold(self, pick: int, amount: int | None, days: int) -> None:
            order_id = self.orders[pick % len(self.orders)]
            currency = self.call("checkout", "GET", f"/v1/orders/{order_id}").json()["currency"]
            body: dict[str, Any] = {
                "order_id": order_id,
                "reason": "prop",
                "expires_at": (api.clock.now() + timedelta(days=days)).isoformat(),
            }
            if amount is not None:
                body["amount"] = {"amount": amount, "currency": currency}
            response = self.call("ip_staff", "POST", "/v1/holds", body)
            assert response.status_code in OK | REFUSED
            if response.status_code == 201:
                self.holds.append(response.json()["id"])

        @precondition(lambda self: self.holds)
        @rule(pick=st.integers(0), part=st.one_of(st.none(), st.integers(1, 10**9)))
        def release(self, pick: int, part: int | None) -> None:
            hold = self.call("checkout", "GET", f"/v1/holds/{self.holds[pick % len(self.holds)]}").json()
            body: dict[str, Any] = {"reason": "prop"}
            if part is not None:
                body["amount"] = {"amount": part, "currency": hold["amount"]["currency"]}
            response = self.call("checkout", "POST", f"/v1/holds/{hold['id']}/release", body)
            assert response.status_code in OK | REFUSED
            if part is not None and part > hold["amount"]["amount"] and hold["status"] in ("active", "contested"):
                assert response.json()["code"] == "exceeds_held_amount"

        @precondition(lambda self: self.holds)
        @rule(pick=st.integers(0), days=st.integers(1, 300))
        def extend(self, pick: int, days: int) -> None:
            hold_id = self.holds[pick % len(self.holds)]
            body = {"expires_at": (api.clock.now() + timedelta(days=days)).isoformat(), "reason": "prop"}
            assert self.call("ip_staff", "POST", f"/v1/holds/{hold_id}/extend", body).status_code in OK | REFUSED

        @precondition(lambda self: self.holds)
        @rule(pick=st.integers(0))
        def contest(self, pick: int) -> None:
            hold_id = self.holds[pick % len(self.holds)]
            assert (
                self.call("checkout", "POST", f"/v1/holds/{hold_id}/contest", {"statement": "genuine"}).status_code
                in OK | REFUSED
            )

        @rule(days=st.integers(1, 40))
        def time_passes(self, days: int) -> None:
            api.clock.advance(timedelta(days=days))
            expire_due(api.parts.engine, api.clock.now())

        @precondition(lambda self: self.orders)
        @rule(pick=st.integers(0))
        def confirm(self, pick: int) -> None:
            order_id = self.orders[pick % len(self.orders)]
            assert self.call("checkout", "POST", f"/v1/orders/{order_id}/confirm").status_code in OK | REFUSED

        @precondition(lambda self: self.orders)
        @rule(pick=st.integers(0), part=st.one_of(st.none(), st.integers(1, 10**9)))
        def refund(self, pick: int, part: int | None) -> None:
            order = self.call("checkout", "GET", f"/v1/orders/{self.orders[pick % len(self.orders)]}").json()
            body: dict[str, Any] = {"reason": "prop"}
            if part is not None:
                body["amount"] = {"amount": part, "currency": order["currency"]}
            response = self.call("checkout", "POST", f"/v1/orders/{order['order_id']}/refund", body)
            assert response.status_code in OK | REFUSED
            if response.status_code == 200:
                assert response.json()["balances"]["refunded"] <= order["amount"]["amount"]

        @rule(seller=st.sampled_from(SELLERS), freeze=st.booleans())
        def freeze_or_unfreeze(self, seller: str, freeze: bool) -> None:
            role, action = ("ip_staff", "freeze") if freeze else ("cp_supervisor", "unfreeze")
            assert (
                self.call(role, "POST", f"/v1/sellers/{seller}/{action}", {"reason": "prop"}).status_code
                in OK | REFUSED
            )

        @invariant()
        def money_is_conserved(self) -> None:
            assert_conserved(api)

    CheckoutMachine.TestCase.settings = settings(
        max_examples=12 if api.db.kind == "sqlite" else 8,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    CheckoutMachine.TestCase().runTest()


@pytest.mark.timeout(900)
def test_random_checkout_traffic_conserves_money(api: Api) -> None:
    """Orders, holds, releases, extensions, expiries, confirmations, refunds, freezes: nothing created or lost."""
    run_checkout_machine(api)
