"""Faults on demand: magic inputs and /control/faults rules, for both rails."""

from __future__ import annotations

from typing import Any

import pytest
from standardwebhooks import Webhook

from simulators import SimulatedConnectionDrop
from tests.unit.simulators.builders import (
    BANK_URL,
    CARD_URL,
    SECRET,
    Harness,
    a_payment,
    sepa_pain001,
    tx_statuses,
    xml,
)


def executions(sim: Harness) -> dict[str, int]:
    """Executions per instruction in the simulator's books."""
    result: dict[str, int] = sim.ledger()["executions"]
    return result


def add_fault(sim: Harness, **rule: Any) -> dict[str, Any]:
    """POST a fault rule and return it."""
    response = sim.client.post("/control/faults", json=rule)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


class TestLostResponses:
    """Instructions executed although the client saw a failure."""

    def test_magic_94_books_then_loses_the_response(self, sim: Harness) -> None:
        """An amount ending 94 answers 504, yet a status lookup shows it executed once."""
        response = sim.post_pain001(sepa_pain001([a_payment("pay_1", amount=1094)]))
        assert response.status_code == 504
        assert response.json()["code"] == "simulated_response_lost"
        status = sim.client.get("/bank/v1/credit-transfers/pay_1")
        assert tx_statuses(status.content) == {"pay_1": ("ACSP", None)}
        retry = sim.post_pain001(sepa_pain001([a_payment("pay_1", amount=1094)]))
        assert retry.status_code == 200  # magic faults fire on the first receipt only
        sim.advance(60)
        sim.tick()
        status = sim.client.get("/bank/v1/credit-transfers/pay_1")
        assert tx_statuses(status.content) == {"pay_1": ("ACSC", None)}
        assert executions(sim) == {"bank:pay_1": 1}

    def test_magic_98_times_out_after_booking(self, sim: Harness) -> None:
        """An amount ending 98 executes, sleeps the configured timeout, then answers 504."""
        response = sim.post_pain001(sepa_pain001([a_payment("pay_1", amount=1098)]))
        assert response.status_code == 504
        assert sim.sleeps.calls == [sim.config.timeout_s]
        assert executions(sim) == {"bank:pay_1": 1}

    def test_card_magic_98_times_out_after_execution(self, sim: Harness) -> None:
        """A refund ending 98 executes, times out, and its retry replays without executing."""
        body = {
            "payment_reference": "psp_1",
            "amount": {"amount": 498, "currency": "EUR"},
            "refund_id": "ref_1",
        }
        first = sim.client.post("/card/v1/refunds", json=body, headers={"Idempotency-Key": "k"})
        assert first.status_code == 504
        retry = sim.client.post("/card/v1/refunds", json=body, headers={"Idempotency-Key": "k"})
        assert retry.status_code == 201
        assert retry.headers["idempotent-replayed"] == "true"
        assert executions(sim) == {"card:ref_1": 1}

    def test_drop_connection_rule_executes_then_cuts_the_connection(self, sim: Harness) -> None:
        """A drop_connection rule raises an httpx protocol error in-process, after executing."""
        add_fault(sim, operation="bank.credit_transfer", fault="drop_connection")
        with pytest.raises(SimulatedConnectionDrop):
            sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        assert executions(sim) == {"bank:pay_1": 1}
        assert sim.post_pain001(sepa_pain001([a_payment("pay_1")])).status_code == 200
        assert executions(sim) == {"bank:pay_1": 1}


class TestFailuresBeforeExecution:
    """Failures that leave nothing executed, so a blind retry is safe."""

    def test_magic_95_fails_once_then_succeeds(self, sim: Harness) -> None:
        """An amount ending 95 answers 503 the first time with nothing executed."""
        body = sepa_pain001([a_payment("pay_1", amount=1095)])
        assert sim.post_pain001(body).status_code == 503
        assert sim.ledger()["bank"]["transfers"] == []
        assert sim.post_pain001(body).status_code == 200
        assert executions(sim) == {"bank:pay_1": 1}

    def test_error_rule_fires_the_given_number_of_times(self, sim: Harness) -> None:
        """An error_5xx rule with times=2 fails two requests, then the rule is gone."""
        add_fault(sim, operation="card.refund_status", fault="error_5xx", times=2, status_code=502)
        codes = [sim.client.get("/card/v1/refunds/x").status_code for _ in range(3)]
        assert codes == [502, 502, 404]
        assert sim.client.get("/control/faults").json() == []

    def test_timeout_rule_sleeps_and_executes_nothing(self, sim: Harness) -> None:
        """A timeout rule sleeps its delay, answers 504 and leaves the books empty."""
        add_fault(sim, operation="bank.credit_transfer", fault="timeout", delay_s=0.25)
        response = sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        assert response.status_code == 504
        assert sim.sleeps.calls == [0.25]
        assert sim.ledger()["bank"]["transfers"] == []

    def test_slow_rule_answers_normally_after_a_delay(self, sim: Harness) -> None:
        """A slow rule delays by the configured slow_s, then processes normally."""
        add_fault(sim, operation="bank.transfer_status", fault="slow")
        assert sim.client.get("/bank/v1/credit-transfers/x").status_code == 404
        assert sim.sleeps.calls == [sim.config.slow_s]

    def test_match_limits_a_rule_to_one_instruction(self, sim: Harness) -> None:
        """A rule with match only fires for the instruction whose id contains it."""
        add_fault(sim, operation="bank.credit_transfer", fault="error_5xx", match="pay_2")
        assert sim.post_pain001(sepa_pain001([a_payment("pay_1")])).status_code == 200
        assert sim.post_pain001(sepa_pain001([a_payment("pay_2")])).status_code == 503

    def test_probability_is_reproducible_with_a_seed(self) -> None:
        """Two simulators with the same seed inject the same faults for the same requests."""
        from tests.unit.simulators.builders import make_harness

        runs = []
        for _ in range(2):
            sim = make_harness(seed=7)
            add_fault(
                sim,
                operation="bank.transfer_status",
                fault="error_5xx",
                times=None,
                probability=0.5,
            )
            runs.append([sim.client.get("/bank/v1/credit-transfers/x").status_code for _ in range(20)])
        assert runs[0] == runs[1]
        assert {503, 404} == set(runs[0])

    def test_rule_for_the_wrong_kind_of_operation_is_422(self, sim: Harness) -> None:
        """A callback fault on a request operation (or the reverse) is refused."""
        response = sim.client.post("/control/faults", json={"operation": "card.refund", "fault": "duplicate"})
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"


class TestCallbackFaults:
    """Duplicate and out-of-order webhooks."""

    def test_magic_93_delivers_each_callback_twice_with_one_id(self, sim: Harness) -> None:
        """An amount ending 93 sends its camt.054 twice with the same webhook-id and body."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1", amount=1093)]))
        sim.advance(60)
        sim.tick()
        first, second = sim.callbacks_of(BANK_URL)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body
        for request in (first, second):
            Webhook(SECRET).verify(request.body, request.headers, json_parse=False)

    def test_duplicate_rule_on_card_callbacks(self, sim: Harness) -> None:
        """A duplicate rule on card.callback sends refund.succeeded twice."""
        add_fault(sim, operation="card.callback", fault="duplicate")
        body = {
            "payment_reference": "psp_1",
            "amount": {"amount": 100, "currency": "EUR"},
            "refund_id": "ref_1",
        }
        sim.client.post("/card/v1/refunds", json=body, headers={"Idempotency-Key": "k"})
        sim.advance(30)
        sim.tick()
        events = [Webhook(SECRET).verify(r.body, r.headers) for r in sim.callbacks_of(CARD_URL)]
        assert [e["type"] for e in events] == ["refund.succeeded", "refund.succeeded"]
        assert events[0]["id"] == events[1]["id"]

    def test_magic_92_notifies_the_return_before_the_booking(self, sim: Harness) -> None:
        """An amount ending 92 is returned at settlement and the return is notified first."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1", amount=1092)]))
        sim.advance(60)
        sim.tick()
        first, second = sim.callbacks_of(BANK_URL)
        indicator = ".//{urn:iso:std:iso:20022:tech:xsd:camt.054.001.02}CdtDbtInd"
        assert [xml(r.body).findtext(indicator) for r in (first, second)] == ["CRDT", "DBIT"]

    def test_card_magic_92_notifies_the_chargeback_first(self, sim: Harness) -> None:
        """A refund ending 92 gets chargeback.created delivered before refund.succeeded."""
        body = {
            "payment_reference": "psp_1",
            "amount": {"amount": 192, "currency": "EUR"},
            "refund_id": "ref_1",
        }
        sim.client.post("/card/v1/refunds", json=body, headers={"Idempotency-Key": "k"})
        sim.advance(30)
        sim.tick()
        types = [Webhook(SECRET).verify(r.body, r.headers)["type"] for r in sim.callbacks_of(CARD_URL)]
        assert types == ["chargeback.created", "refund.succeeded"]

    def test_out_of_order_rule_reverses_a_batch(self, sim: Harness) -> None:
        """An out_of_order rule delivers the callbacks due in one tick newest first."""
        add_fault(sim, operation="bank.callback", fault="out_of_order")
        sim.post_pain001(sepa_pain001([a_payment("pay_1"), a_payment("pay_2")]))
        sim.advance(60)
        sim.tick()
        e2e = ".//{urn:iso:std:iso:20022:tech:xsd:camt.054.001.02}EndToEndId"
        assert [xml(r.body).findtext(e2e) for r in sim.callbacks_of(BANK_URL)] == [
            "pay_2",
            "pay_1",
        ]
