"""The implementations under contract, each wrapped in a "world" that can move time and misbehave.

A world gives the contract tests one vocabulary for both implementations of a port:
`rail` (the port), `advance(s)` (move the clock, settle what is due, return the callback
bodies the rail sent), `arrange(key, fault, amount)` (make one instruction misbehave and
return the amount to use), and inspection of the rail's own books (`executions`, `moved`).
The simulator worlds drive the real adapters against the in-process simulator app through
its public HTTP surface only (control endpoints included), never its internals.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import httpx
from fastapi.testclient import TestClient

from adapters.bank.iso20022 import Iso20022BankRail
from adapters.card.acquirer import AcquirerCardRail
from adapters.fakes import FAKE_ACCOUNT_IBAN, FakeBankRail, FakeCardRail, Fault
from adapters.transport import RetryPolicy
from escrow.money import Money
from escrow.ports import BankAccount, BankRail, CardRail, ManualClock
from simulators import RecordingSender, SimClock, SimulatorConfig, create_app

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TODAY = START.date()
SECRET = "whsec_" + base64.b64encode(b"contract-test-webhook-secret-01").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"contract-test-webhook-secret-02").decode()
DEBTOR = BankAccount(iban=FAKE_ACCOUNT_IBAN, name="Marketplace Escrow", bic="COBADEFFXXX")
CREDITOR = BankAccount(iban="FR1420041010050500013M02606", name="Seller SARL", bic="BNPAFRPPXXX")
CLOSED_IBAN = "DE94370400440532010000"  # valid checksum; the simulator's magic "account closed"
BANK_URL = "http://service.test/v1/webhooks/bank"
CARD_URL = "http://service.test/v1/webhooks/card"
SETTLE_DELAY_S = 60.0
CARD_SETTLE_DELAY_S = 30.0
FAIL_AT_SETTLEMENT_DIGITS = 97  # the simulator's documented magic ending (README "Magic inputs")


@dataclass
class Sleeps:
    """A `sleep` that records instead of waiting, so retries cost nothing."""

    calls: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class BankWorld(Protocol):
    name: str
    rail: BankRail
    sleeps: Sleeps

    def advance(self, seconds: float) -> list[bytes]: ...
    def arrange(self, key: str, fault: Fault, amount: Money, times: int = 1) -> Money: ...
    def closed_account(self) -> BankAccount: ...
    def return_transfer(self, end_to_end_id: str, reason_code: str) -> list[bytes]: ...
    def executions(self, end_to_end_id: str) -> int: ...
    def moved(self, currency: str) -> Money: ...
    def statement_document(self, on: date) -> bytes: ...


class CardWorld(Protocol):
    name: str
    rail: CardRail
    sleeps: Sleeps

    def advance(self, seconds: float) -> list[bytes]: ...
    def arrange(self, key: str, fault: Fault, amount: Money, times: int = 1) -> Money: ...
    def raise_chargeback(self, payment_reference: str, amount: Money, reason_code: str) -> list[bytes]: ...
    def executions(self, refund_id: str) -> int: ...
    def refunded(self, currency: str) -> Money: ...


# --- fakes -----------------------------------------------------------------------------------


class FakeBankWorld:
    name = "fake"

    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.fake = FakeBankRail(self.clock, account_iban=DEBTOR.iban, settle_delay=timedelta(seconds=SETTLE_DELAY_S))
        self.rail: BankRail = self.fake
        self.sleeps = Sleeps()

    def advance(self, seconds: float) -> list[bytes]:
        self.clock.advance(timedelta(seconds=seconds))
        return self.fake.tick()

    def arrange(self, key: str, fault: Fault, amount: Money, times: int = 1) -> Money:
        self.fake.script(key, fault, times)
        return amount

    def closed_account(self) -> BankAccount:
        self.fake.close_account(CLOSED_IBAN, "AC04")
        return BankAccount(CLOSED_IBAN, "Closed GmbH")

    def return_transfer(self, end_to_end_id: str, reason_code: str) -> list[bytes]:
        return self.fake.return_transfer(end_to_end_id, reason_code)

    def executions(self, end_to_end_id: str) -> int:
        return self.fake.executions(end_to_end_id)

    def moved(self, currency: str) -> Money:
        return self.fake.moved(currency)

    def statement_document(self, on: date) -> bytes:
        return self.fake.statement_body(on)


class FakeCardWorld:
    name = "fake"

    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.fake = FakeCardRail(self.clock, settle_delay=timedelta(seconds=CARD_SETTLE_DELAY_S))
        self.rail: CardRail = self.fake
        self.sleeps = Sleeps()

    def advance(self, seconds: float) -> list[bytes]:
        self.clock.advance(timedelta(seconds=seconds))
        return self.fake.tick()

    def arrange(self, key: str, fault: Fault, amount: Money, times: int = 1) -> Money:
        self.fake.script(key, fault, times)
        return amount

    def raise_chargeback(self, payment_reference: str, amount: Money, reason_code: str) -> list[bytes]:
        return self.fake.raise_chargeback(payment_reference, amount, reason_code)

    def executions(self, refund_id: str) -> int:
        return self.fake.executions(refund_id)

    def refunded(self, currency: str) -> Money:
        return self.fake.refunded(currency)


# --- the simulator ---------------------------------------------------------------------------


class Simulator:
    """One in-process simulator app with a manual clock and a recording callback sender."""

    def __init__(self) -> None:
        self.clock = SimClock.manual(START)
        self.sender = RecordingSender()
        self.config = SimulatorConfig(
            clock=self.clock,
            bank_webhook_url=BANK_URL,
            bank_webhook_secret=SECRET,
            card_webhook_url=CARD_URL,
            card_webhook_secret=SECRET,
            settle_delay_s=SETTLE_DELAY_S,
            card_settle_delay_s=CARD_SETTLE_DELAY_S,
            return_delay_s=3600.0,
            chargeback_delay_s=3600.0,
            callback_sender=self.sender,
            signing_clock=self.clock.now,  # the receiver verifies against the same clock
            sleep=lambda _s: None,
            timeout_s=0.01,
            slow_s=0.01,
        )
        self.client = TestClient(create_app(self.config))
        self._seen = 0

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.request(method, f"/control/{path}", **kwargs)
        assert response.is_success, response.text
        return response

    def advance(self, seconds: float, url: str) -> list[bytes]:
        """Move the clock, tick, and return the bodies of new callbacks sent to `url`."""
        self.control("POST", "clock", json={"advance_s": seconds})
        self.control("POST", "tick")
        return self.new_callbacks(url)

    def new_callbacks(self, url: str) -> list[bytes]:
        fresh = self.sender.requests[self._seen :]
        self._seen = len(self.sender.requests)
        return [r.body for r in fresh if r.url == url]

    def fault(self, operation: str, key: str, fault: Fault, times: int) -> None:
        rule: dict[str, Any] = {"operation": operation, "times": times, "match": key}
        if fault is Fault.UNAVAILABLE:
            rule |= {"fault": "error_5xx", "status_code": 503}
        elif fault is Fault.RESPONSE_LOST:
            rule |= {"fault": "response_lost"}
        elif fault is Fault.LOST_BEFORE_PROCESSING:
            rule |= {"fault": "timeout"}
        else:
            raise ValueError(f"no fault rule for {fault}")
        self.control("POST", "faults", json=rule)

    def ledger(self) -> dict[str, Any]:
        books: dict[str, Any] = self.control("GET", "ledger").json()
        assert books["executed_more_than_once"] == [], books["executed_more_than_once"]
        return books


def _magic(amount: Money, digits: int) -> Money:
    """`amount` with its last two minor-unit digits replaced by a simulator magic ending."""
    return Money(amount.amount_minor - amount.amount_minor % 100 + digits, amount.currency)


class SimulatorBankWorld:
    name = "simulator"

    def __init__(self) -> None:
        self.sim = Simulator()
        self.sleeps = Sleeps()
        self.adapter = Iso20022BankRail(
            self.sim.client, debtor=DEBTOR, clock=self.sim.clock, retry=RetryPolicy(sleep=self.sleeps)
        )
        self.rail: BankRail = self.adapter

    def advance(self, seconds: float) -> list[bytes]:
        return self.sim.advance(seconds, BANK_URL)

    def arrange(self, key: str, fault: Fault, amount: Money, times: int = 1) -> Money:
        if fault is Fault.FAIL_AT_SETTLEMENT:
            return _magic(amount, FAIL_AT_SETTLEMENT_DIGITS)
        self.sim.fault("bank.credit_transfer", key, fault, times)
        return amount

    def closed_account(self) -> BankAccount:
        return BankAccount(CLOSED_IBAN, "Closed GmbH")

    def return_transfer(self, end_to_end_id: str, reason_code: str) -> list[bytes]:
        self.sim.control("POST", "bank/returns", json={"end_to_end_id": end_to_end_id, "reason_code": reason_code})
        return self.advance(0)

    def executions(self, end_to_end_id: str) -> int:
        executions: dict[str, int] = self.sim.ledger()["executions"]
        return executions.get(f"bank:{end_to_end_id}", 0)

    def moved(self, currency: str) -> Money:
        totals = [t for t in self.sim.ledger()["bank"]["totals"] if t["currency"] == currency]
        return Money(totals[0]["net_moved"] if totals else 0, currency)

    def statement_document(self, on: date) -> bytes:
        response: httpx.Response = self.sim.client.get(
            "/bank/v1/statements", params={"date": on.isoformat(), "account": DEBTOR.iban}
        )
        assert response.status_code == 200, response.text
        return response.content


class SimulatorCardWorld:
    name = "simulator"

    def __init__(self) -> None:
        self.sim = Simulator()
        self.sleeps = Sleeps()
        self.adapter = AcquirerCardRail(self.sim.client, retry=RetryPolicy(sleep=self.sleeps))
        self.rail: CardRail = self.adapter

    def advance(self, seconds: float) -> list[bytes]:
        return self.sim.advance(seconds, CARD_URL)

    def arrange(self, key: str, fault: Fault, amount: Money, times: int = 1) -> Money:
        if fault is Fault.FAIL_AT_SETTLEMENT:
            return _magic(amount, FAIL_AT_SETTLEMENT_DIGITS)
        self.sim.fault("card.refund", key, fault, times)
        return amount

    def raise_chargeback(self, payment_reference: str, amount: Money, reason_code: str) -> list[bytes]:
        self.sim.control(
            "POST",
            "card/chargebacks",
            json={"payment_reference": payment_reference, "amount": amount.to_wire(), "reason_code": reason_code},
        )
        return self.advance(0)

    def executions(self, refund_id: str) -> int:
        executions: dict[str, int] = self.sim.ledger()["executions"]
        return executions.get(f"card:{refund_id}", 0)

    def refunded(self, currency: str) -> Money:
        totals = [t for t in self.sim.ledger()["card"]["totals"] if t["currency"] == currency]
        return Money(totals[0]["refunded"] if totals else 0, currency)
