"""A hypothesis state machine over HTTP: checkout traffic mixed with the refund-first flows.

After every step: the trial balance is zero, no guarded account is negative, each order is
conserved, and the guarantee fund, what sellers owe and their liabilities reconcile with the
refund rows; no buyer is ever refunded more than they paid (assert_refund_first_sound).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from escrow.audit import Actor
from escrow.errors import IllegalTransition
from escrow.ledger import Ledger
from escrow.outbox import Outcome
from escrow.persistence.db import transaction
from escrow.service import advance_refunds
from escrow.service.recovery import recover_outstanding
from tests.integration.checkout_support import an_order
from tests.integration.conftest import Api
from tests.integration.test_refund_first import assert_refund_first_sound, pay_out

SELLERS = ["s-1", "s-2"]
OK = {200, 201}
REFUSED = {409, 422}
ROLES = ("checkout", "ip_staff", "cp_agent", "cp_supervisor", "finance")


def run_refund_first_machine(api: Api) -> None:
    class RefundFirstMachine(RuleBasedStateMachine):
        """Random traffic from checkout, consumer protection, IP staff and finance."""

        def __init__(self) -> None:
            super().__init__()
            self.orders: list[str] = []
            self.holds: list[str] = []
            self.refunds: list[str] = []
            self.requested_by: dict[str, str] = {}
            self.count = 0

        @initialize(
            fund=st.integers(20_000, 500_000),
            amounts=st.lists(st.integers(1, 100_000), min_size=1, max_size=4),
            percents=st.lists(st.integers(1, 100), max_size=3),
        )
        def fresh(self, fund: int, amounts: list[int], percents: list[int]) -> None:
            api.parts.engine.dispose()
            api.db.reset()
            api.parts.authenticator.forget_all()
            self.keys = {r: api.key(r) for r in ROLES}
            self.keys["cp_supervisor_2"] = api.key("cp_supervisor", name="second")
            if fund:
                self.top_up(fund)
            for i, amount in enumerate(amounts):
                self.new_order(amount, SELLERS[i % 2], "card")
            for i, percent in enumerate(percents):
                self.advance_refund(i, percent, "cp_agent")

        def call(self, role: str, method: str, path: str, body: Any = None) -> Any:
            response = api.client.request(method, path, json=body, headers=self.keys[role])
            assert response.status_code < 500, response.text
            return response

        def pick(self, items: list[str], n: int) -> str:
            return items[n % len(items)]

        @rule(amount=st.integers(1, 200_000))
        def top_up(self, amount: int) -> None:
            body = {"amount": {"amount": amount, "currency": "EUR"}, "reference": "T"}
            assert self.call("finance", "POST", "/v1/guarantee-fund/top-ups", body).status_code == 201

        @rule(amount=st.integers(1, 100_000), seller=st.sampled_from(SELLERS),
              method=st.sampled_from(["card", "bank_transfer"]))  # fmt: skip
        def new_order(self, amount: int, seller: str, method: str) -> None:
            self.count += 1
            body = an_order(self.count, seller_id=seller, amount={"amount": amount, "currency": "EUR"},
                            payment={"method": method, "reference": f"p-{self.count}"})  # fmt: skip
            assert self.call("checkout", "POST", "/v1/orders", body).status_code == 201
            self.orders.append(f"o-{self.count}")

        @precondition(lambda self: self.orders)
        @rule(n=st.integers(0), amount=st.one_of(st.none(), st.integers(1, 100_000)))
        def hold(self, n: int, amount: int | None) -> None:
            body: dict[str, Any] = {"order_id": self.pick(self.orders, n), "reason": "prop"}
            if amount is not None:
                body["amount"] = {"amount": amount, "currency": "EUR"}
            response = self.call("ip_staff", "POST", "/v1/holds", body)
            assert response.status_code in OK | REFUSED
            if response.status_code == 201:
                self.holds.append(response.json()["id"])

        @precondition(lambda self: self.holds)
        @rule(n=st.integers(0), part=st.one_of(st.none(), st.integers(1, 100_000)))
        def release(self, n: int, part: int | None) -> None:
            body: dict[str, Any] = {"reason": "prop"}
            if part is not None:
                body["amount"] = {"amount": part, "currency": "EUR"}
            response = self.call("ip_staff", "POST", f"/v1/holds/{self.pick(self.holds, n)}/release", body)
            assert response.status_code in OK | REFUSED

        @precondition(lambda self: self.orders)
        @rule(n=st.integers(0))
        def confirm(self, n: int) -> None:
            response = self.call("checkout", "POST", f"/v1/orders/{self.pick(self.orders, n)}/confirm")
            assert response.status_code in OK | REFUSED

        @precondition(lambda self: self.orders)
        @rule(n=st.integers(0), part=st.one_of(st.none(), st.integers(1, 100_000)))
        def ordinary_refund(self, n: int, part: int | None) -> None:
            body: dict[str, Any] = {"reason": "prop"}
            if part is not None:
                body["amount"] = {"amount": part, "currency": "EUR"}
            response = self.call("checkout", "POST", f"/v1/orders/{self.pick(self.orders, n)}/refund", body)
            assert response.status_code in OK | REFUSED

        @precondition(lambda self: self.orders)
        @rule(n=st.integers(0), percent=st.integers(1, 130), role=st.sampled_from(["cp_agent", "cp_supervisor"]))
        def advance_refund(self, n: int, percent: int, role: str) -> None:
            order_id = self.pick(self.orders, n)
            paid = self.call("cp_agent", "GET", f"/v1/orders/{order_id}").json()["amount"]["amount"]
            amount = max(paid * percent // 100, 1)
            body = {"order_id": order_id, "amount": {"amount": amount, "currency": "EUR"}, "reason": "prop"}
            response = self.call(role, "POST", "/v1/refunds", body)
            assert response.status_code in OK | REFUSED, response.text
            if response.status_code == 201:
                self.refunds.append(response.json()["id"])
                self.requested_by[response.json()["id"]] = role
            elif response.status_code == 409:
                assert response.json()["code"] in ("exceeds_refundable_amount", "guarantee_fund_insufficient")

        @precondition(lambda self: self.refunds)
        @rule(n=st.integers(0), who=st.sampled_from(["cp_supervisor", "cp_supervisor_2"]), approve=st.booleans())
        def decide(self, n: int, who: str, approve: bool) -> None:
            refund_id = self.pick(self.refunds, n)
            before = self.call("cp_agent", "GET", f"/v1/refunds/{refund_id}").json()
            action = "approve" if approve else "reject"
            response = self.call(who, "POST", f"/v1/refunds/{refund_id}/{action}", {"reason": "prop"})
            assert response.status_code in OK | REFUSED | {403}
            if response.status_code == 403:  # only ever the requester deciding on their own request
                assert response.json()["code"] == "four_eyes_required" and before["status"] == "pending_approval"
                assert self.requested_by[refund_id] == who
            if before["status"] != "pending_approval":
                assert response.status_code in REFUSED | {403}

        @precondition(lambda self: self.refunds)
        @rule(n=st.integers(0), kind=st.sampled_from(["succeeded", "failed", "returned"]))
        def rail_outcome(self, n: int, kind: str) -> None:
            refund_id = self.pick(self.refunds, n)
            now = api.clock.now()

            def work(conn: Any) -> bool:
                r, frozen = advance_refunds.lock_for_outcome(conn, refund_id, now)
                if r.instruction_key is None:
                    return False
                return advance_refunds.apply_outcome(conn, r, frozen, Outcome(kind), now, key=r.instruction_key)  # type: ignore[arg-type]

            transaction(api.parts.engine, work)

        @precondition(lambda self: self.refunds)
        @rule(n=st.integers(0))
        def staff_fail(self, n: int) -> None:
            now, actor = api.clock.now(), Actor("staff", "finance")
            with contextlib.suppress(IllegalTransition):  # not submitted, or the rail may hold it
                transaction(api.parts.engine, lambda conn: advance_refunds.fail_refund(
                    conn, actor, now, self.pick(self.refunds, n), "prop"))  # fmt: skip

        @precondition(lambda self: self.refunds)
        @rule(n=st.integers(0), bank=st.booleans())
        def retry(self, n: int, bank: bool) -> None:
            destination = {"rail": "bank", "party_id": "b-1"} if bank else {"rail": "card", "payment_reference": "x"}
            response = self.call("finance", "POST", f"/v1/refunds/{self.pick(self.refunds, n)}/retry",
                                 {"destination": destination})  # fmt: skip
            assert response.status_code in OK | REFUSED

        @precondition(lambda self: self.refunds)
        @rule(n=st.integers(0))
        def recover(self, n: int) -> None:
            assert self.call("finance", "POST", f"/v1/refunds/{self.pick(self.refunds, n)}/recover").status_code == 200

        @rule()
        def recovery_worker(self) -> None:
            recover_outstanding(api.parts.engine, api.clock.now(), api.parts.settings.policies)

        @precondition(lambda self: self.refunds)
        @rule(n=st.integers(0), part=st.one_of(st.none(), st.integers(1, 50_000)))
        def write_off(self, n: int, part: int | None) -> None:
            body: dict[str, Any] = {"reason": "prop"}
            if part is not None:
                body["amount"] = {"amount": part, "currency": "EUR"}
            response = self.call("finance", "POST", f"/v1/refunds/{self.pick(self.refunds, n)}/write-off", body)
            assert response.status_code in OK | REFUSED

        @rule(seller=st.sampled_from(SELLERS), amount=st.integers(1, 50_000))
        def deposit(self, seller: str, amount: int) -> None:
            body = {"amount": {"amount": amount, "currency": "EUR"}, "reference": "D"}
            assert self.call("finance", "POST", f"/v1/sellers/{seller}/deposit", body).status_code == 201

        @rule(seller=st.sampled_from(SELLERS), amount=st.one_of(st.none(), st.integers(1, 50_000)))
        def confiscate(self, seller: str, amount: int | None) -> None:
            body: dict[str, Any] = {"reason": "prop", "finding_ids": ["fnd_prop"]}
            if amount is not None:
                body["amount"] = {"amount": amount, "currency": "EUR"}
            response = self.call("ip_staff", "POST", f"/v1/sellers/{seller}/deposit/confiscate", body)
            assert response.status_code in OK | REFUSED

        @rule(seller=st.sampled_from(SELLERS), points=st.integers(1, 6))
        def penalty(self, seller: str, points: int) -> None:
            body = {"points": points, "reason": "prop", "finding_id": "fnd_prop"}
            response = self.call("ip_staff", "POST", f"/v1/sellers/{seller}/penalties", body)
            assert response.status_code == 201
            standing = response.json()["standing"]
            if standing["points_left"] == 0 or standing["strikes"] >= standing["freeze_at_strikes"]:
                assert self.call("ip_staff", "GET", f"/v1/sellers/{seller}").json()["frozen"] is True

        @rule(seller=st.sampled_from(SELLERS), freeze=st.booleans())
        def freeze_or_unfreeze(self, seller: str, freeze: bool) -> None:
            role, action = ("ip_staff", "freeze") if freeze else ("cp_supervisor", "unfreeze")
            response = self.call(role, "POST", f"/v1/sellers/{seller}/{action}", {"reason": "prop"})
            assert response.status_code in OK | REFUSED

        @rule(seller=st.sampled_from(SELLERS))
        def payout(self, seller: str) -> None:
            """What a payout does to the books: the seller's payable proceeds leave."""
            with api.parts.engine.connect() as conn:
                payable = Ledger(conn).balance(f"seller:{seller}:payable", "EUR")
            if payable > 0:
                pay_out(api, seller, "payable", payable)

        @invariant()
        def books_reconcile(self) -> None:
            assert_refund_first_sound(api)

    RefundFirstMachine.TestCase.settings = settings(
        max_examples=25 if api.db.kind == "sqlite" else 10,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    RefundFirstMachine.TestCase().runTest()


@pytest.mark.timeout(900)
def test_refund_first_traffic_keeps_the_books_exact(api: Api) -> None:
    """Orders, holds, confirmations, advance refunds, decisions, outcomes, recoveries, deposits,
    confiscations, strikes and releases at random: the fund, receivables and liabilities reconcile."""
    run_refund_first_machine(api)
