"""A world for outbox tests: the service in-process, wired to the in-process simulator.

The simulator's callbacks are forwarded into the service's `POST /v1/webhooks/{adapter}`
(or only recorded, for tests that deliver them themselves); the worker's rounds run in the
test thread with the service's manual clock, which the simulator's clock follows.
Also the invariant checks every outbox test ends with.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from datetime import timedelta
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import text

from adapters.bank.iso20022 import Iso20022BankRail
from adapters.card.acquirer import AcquirerCardRail
from adapters.transport import RetryPolicy
from adapters.webhooks import verify
from escrow.ledger import Ledger
from escrow.outbox import Rails
from escrow.ports import BankAccount
from escrow.service.payouts import sweep
from escrow.worker import Policy, deliver_due
from simulators import CallbackRequest, RecordingSender, SimClock, SimulatorConfig, create_app
from tests.integration.conftest import Api
from tests.integration.test_ledger import assert_books_sound

SECRET = "whsec_" + base64.b64encode(b"outbox-test-webhook-secret-0001").decode()
DEBTOR = BankAccount(iban="DE89370400440532013000", name="Marketplace Escrow", bic="COBADEFFXXX")
SELLER_IBAN = "FR1420041010050500013M02606"
BUYER_IBAN = "DE02120300000000202051"
CLOSED_IBAN = "DE94370400440532010000"  # valid checksum; the simulator's magic "account closed"
SETTLE_S = 60.0
CARD_SETTLE_S = 30.0


class World:
    """The service, the simulator, and a worker driven round by round."""

    def __init__(self, api: Api, *, forward: bool = True, magic: bool = True) -> None:
        self.api = api
        self.forward = forward
        self.recorder = RecordingSender()
        self.sim_clock = SimClock.manual(api.clock.now())
        config = SimulatorConfig(
            clock=self.sim_clock,
            bank_webhook_url="http://svc/v1/webhooks/bank",
            bank_webhook_secret=SECRET,
            card_webhook_url="http://svc/v1/webhooks/card",
            card_webhook_secret=SECRET,
            settle_delay_s=SETTLE_S,
            card_settle_delay_s=CARD_SETTLE_S,
            return_delay_s=3600.0,
            chargeback_delay_s=3600.0,
            callback_sender=self._send,
            signing_clock=api.clock.now,
            sleep=lambda _s: None,
            timeout_s=0.01,
            slow_s=0.01,
            magic_values=magic,
        )
        self.sim = TestClient(create_app(config))
        no_wait = RetryPolicy(sleep=lambda _s: None)
        self.rails = Rails(
            bank=Iso20022BankRail(self.sim, debtor=DEBTOR, clock=api.clock, retry=no_wait),
            card=AcquirerCardRail(self.sim, retry=no_wait),
            cipher=api.parts.rails.cipher,  # type: ignore[attr-defined]
            verify=verify,
            webhook_secrets={"bank": (SECRET,), "card": (SECRET,)},
        )
        api.parts.rails = self.rails  # type: ignore[attr-defined]
        self.policy = Policy(
            attempts_max=6,
            backoff_base_ms=1_000,
            backoff_cap_ms=60_000,
            lease=timedelta(seconds=30),
            poll=timedelta(seconds=600),
            batch=50,
        )
        self.keys = {r: api.key(r) for r in ("checkout", "finance", "ip_staff", "cp_agent", "cp_supervisor")}

    def _send(self, request: CallbackRequest) -> int:
        self.recorder(request)
        if not self.forward:
            return 200
        path = request.url.split("http://svc", 1)[1]
        return int(self.api.client.post(path, content=request.body, headers=request.headers).status_code)

    # --- the service -------------------------------------------------------------------------

    def call(self, role: str, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.api.client.request(method, path, json=body, headers=self.keys[role])

    def account(self, party: str, iban: str = SELLER_IBAN) -> None:
        body = {"holder_name": f"Party {party}", "iban": iban, "bic": "BNPAFRPPXXX"}
        response = self.call("finance", "PUT", f"/v1/parties/{party}/payout-account", body)
        assert response.status_code == 200, response.text

    def paid_order(self, n: int | str, amount: int, *, seller: str = "s-1", method: str = "card") -> None:
        body = {
            "order_id": f"o-{n}",
            "buyer_id": f"b-{n}",
            "seller_id": seller,
            "listing_id": f"l-{n}",
            "title": "Leather wallet, brown",
            "amount": {"amount": amount, "currency": "EUR"},
            "payment": {"method": method, "reference": f"pay-{n}"},
            "jurisdiction": "EU",
        }
        response = self.call("checkout", "POST", "/v1/orders", body)
        assert response.status_code == 201, response.text

    def confirmed_order(self, n: int | str, amount: int, *, seller: str = "s-1") -> None:
        self.paid_order(n, amount, seller=seller)
        response = self.call("checkout", "POST", f"/v1/orders/o-{n}/confirm")
        assert response.status_code == 200, response.text

    def refund(self, n: int | str) -> str:
        response = self.call("cp_agent", "POST", f"/v1/orders/o-{n}/refund", {"reason": "buyer cancelled"})
        assert response.status_code == 200, response.text
        return str(response.json()["refund"]["id"])

    def payouts(self, **params: str) -> list[dict[str, Any]]:
        response = self.call(
            "finance", "GET", "/v1/payouts?limit=200&" + "&".join(f"{k}={v}" for k, v in params.items())
        )
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    # --- the worker and time -----------------------------------------------------------------

    def sweep(self) -> int:
        return sweep(self.api.parts.engine, self.api.clock.now())

    def work(self, rounds_max: int = 50) -> int:
        """Worker rounds until nothing is due now."""
        total = 0
        for _ in range(rounds_max):
            n = deliver_due(self.api.parts.engine, self.rails, self.api.clock, self.policy)
            total += n
            if n == 0:
                return total
        raise AssertionError("the outbox did not drain")

    def advance(self, seconds: float) -> None:
        """Move both clocks and let the simulator settle and call back."""
        self.api.clock.advance(timedelta(seconds=seconds))
        assert self.sim.post("/control/clock", json={"advance_s": seconds}).status_code == 200
        assert self.sim.post("/control/tick").status_code == 200

    def fault(self, rule: dict[str, Any]) -> None:
        assert self.sim.post("/control/faults", json=rule).status_code == 201

    def books(self) -> dict[str, Any]:
        books: dict[str, Any] = self.sim.get("/control/ledger").json()
        return books


def balance(api: Api, account: str, currency: str = "EUR") -> int:
    with api.parts.engine.connect() as conn:
        return Ledger(conn).balance(account, currency)


def assert_outbox_invariants(world: World) -> None:
    """Per-payout conservation, trial balance zero, simulator books == ledger, nothing executed twice."""
    api = world.api
    engine = api.parts.engine
    books = world.books()
    assert books["executed_more_than_once"] == []
    assert all(n <= 1 for n in books["executions"].values()), books["executions"]
    with engine.connect() as conn:
        ledger = Ledger(conn)
        pays = conn.execute(text("SELECT * FROM payouts")).mappings().all()
        refunds = conn.execute(text("SELECT * FROM order_refunds")).mappings().all()
        orders = conn.execute(text("SELECT * FROM orders")).mappings().all()
        in_flight = sum(p["amount"] for p in pays if p["status"] in ("pending", "submitted"))
        assert ledger.balance("in_transit:payouts", "EUR") == in_flight
        paid = sum(p["amount"] for p in pays if p["status"] == "paid")
        bank_refunds = sum(
            r["amount"] for r in refunds if r["method"] == "bank_transfer" and r["status"] == "succeeded"
        )
        card_refunds = sum(r["amount"] for r in refunds if r["method"] == "card" and r["status"] == "succeeded")
        refunds_in_flight = sum(r["amount"] for r in refunds if r["status"] == "submitted")
        assert ledger.balance("in_transit:refunds", "EUR") == refunds_in_flight
        # Each payout's money is in exactly one place: in transit, at the bank, or back with the seller.
        by_seller: dict[str, int] = defaultdict(int)
        for o in orders:
            by_seller[o["seller_id"]] += o["released"] + o["frozen"]
        for seller, proceeds in by_seller.items():
            out = sum(
                p["amount"]
                for p in pays
                if p["seller_id"] == seller and p["status"] in ("pending", "submitted", "paid")
            )
            kept = ledger.balance(f"seller:{seller}:payable", "EUR") + ledger.balance(f"seller:{seller}:frozen", "EUR")
            assert kept + out == proceeds, seller
        # Orders: what was refunded is in transit or at the rail; the rest is where the order says.
        for o in orders:
            assert o["escrowed"] + o["held"] + o["frozen"] + o["released"] + o["refunded"] == o["amount"]
        bank_in = sum(o["amount"] for o in orders if o["payment_method"] == "bank_transfer")
        card_in = sum(o["amount"] for o in orders if o["payment_method"] == "card")
        assert ledger.balance("clearing:bank", "EUR") == -bank_in + paid + bank_refunds
        assert ledger.balance("clearing:card", "EUR") == -card_in + card_refunds
    # The simulator's books equal the ledger's.
    bank_totals = {t["currency"]: t["net_moved"] for t in books["bank"]["totals"]}
    card_totals = {t["currency"]: t["refunded"] for t in books["card"]["totals"]}
    assert bank_totals.get("EUR", 0) == paid + bank_refunds
    assert card_totals.get("EUR", 0) == card_refunds
    assert_books_sound(api.db)
