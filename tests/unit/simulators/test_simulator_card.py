"""The simulated card acquirer: idempotent refunds, status webhooks, chargebacks, reports."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.unit.simulators.builders import CARD_URL, SECRET, Harness


def refund_body(refund_id: str = "ref_1", amount: int | dict[str, Any] = 1999, **overrides: Any) -> dict[str, Any]:
    """A refund request body; an int amount is in EUR cents, a dict is sent as is."""
    money = amount if isinstance(amount, dict) else {"amount": amount, "currency": "EUR"}
    body: dict[str, Any] = {
        "payment_reference": "psp_pay_1",
        "amount": money,
        "refund_id": refund_id,
    }
    body.update(overrides)
    return body


def post_refund(sim: Harness, body: dict[str, Any], key: str | None = "key-1") -> Any:
    """POST a refund with an Idempotency-Key."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    return sim.client.post("/card/v1/refunds", json=body, headers=headers)


def card_events(sim: Harness) -> list[dict[str, Any]]:
    """Verified card webhook payloads, in delivery order."""
    events = []
    for request in sim.callbacks_of(CARD_URL):
        events.append(Webhook(SECRET).verify(request.body, request.headers))
    return events


class TestRefundIdempotency:
    """POST /card/v1/refunds with an Idempotency-Key."""

    def test_refund_is_created_pending(self, sim: Harness) -> None:
        """A new refund answers 201 with status pending and the exact amount."""
        response = post_refund(sim, refund_body())
        assert response.status_code == 201
        refund = response.json()
        assert refund["status"] == "pending"
        assert refund["amount"] == {"amount": 1999, "currency": "EUR"}
        assert sim.client.get("/card/v1/refunds/ref_1").json()["status"] == "pending"

    def test_same_key_and_body_replays_the_first_response(self, sim: Harness) -> None:
        """A retry with the same key and body gets the same response and executes nothing."""
        first = post_refund(sim, refund_body())
        again = post_refund(sim, refund_body())
        assert (again.status_code, again.content) == (first.status_code, first.content)
        assert again.headers["idempotent-replayed"] == "true"
        [refund] = sim.ledger()["card"]["refunds"]
        assert (refund["requests"], refund["executions"]) == (2, 1)

    def test_same_key_with_another_body_is_422(self, sim: Harness) -> None:
        """Reusing a key for another refund is refused with idempotency_key_reused."""
        post_refund(sim, refund_body())
        response = post_refund(sim, refund_body(amount=2000))
        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_key_reused"

    def test_same_refund_id_under_a_new_key_executes_nothing(self, sim: Harness) -> None:
        """The refund_id is a natural key too: a new key for the same refund replays it."""
        post_refund(sim, refund_body())
        again = post_refund(sim, refund_body(), key="key-2")
        assert again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        conflict = post_refund(sim, refund_body(amount=5), key="key-3")
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "refund_id_conflict"
        assert sim.ledger()["executions"] == {"card:ref_1": 1}

    def test_missing_key_is_400(self, sim: Harness) -> None:
        """Without an Idempotency-Key the acquirer refuses to move money."""
        response = post_refund(sim, refund_body(), key=None)
        assert response.status_code == 400
        assert response.json()["code"] == "idempotency_key_missing"

    @pytest.mark.parametrize(
        "amount",
        [
            {"amount": 19.99, "currency": "EUR"},
            {"amount": "1999", "currency": "EUR"},
            {"amount": 0, "currency": "EUR"},
            {"amount": 10**15 + 1, "currency": "EUR"},
            {"amount": 100, "currency": "EURO"},
            {"amount": 100, "currency": "XAU"},
        ],
    )
    def test_invalid_money_is_422(self, sim: Harness, amount: dict[str, Any]) -> None:
        """Floats, strings, non-positive, oversized amounts and bad currencies are refused."""
        response = post_refund(sim, refund_body(amount=amount))
        assert response.status_code == 422
        assert response.json()["errors"]
        assert sim.ledger()["card"]["refunds"] == []

    def test_unknown_refund_is_404(self, sim: Harness) -> None:
        """A refund the acquirer never saw answers 404."""
        assert sim.client.get("/card/v1/refunds/ref_404").status_code == 404


class TestRefundSettlement:
    """Refund status changes and their webhooks."""

    def test_refund_succeeds_after_the_delay_with_a_signed_webhook(self, sim: Harness) -> None:
        """After the settle delay a tick marks it succeeded and sends refund.succeeded."""
        post_refund(sim, refund_body())
        sim.advance(30)
        sim.tick()
        assert sim.client.get("/card/v1/refunds/ref_1").json()["status"] == "succeeded"
        [event] = card_events(sim)
        assert event["type"] == "refund.succeeded"
        assert event["data"]["refund_id"] == "ref_1"
        assert event["data"]["amount"] == {"amount": 1999, "currency": "EUR"}

    def test_magic_amount_97_fails(self, sim: Harness) -> None:
        """An amount ending 97 is accepted, then fails with refund.failed."""
        post_refund(sim, refund_body(amount=1097))
        sim.advance(30)
        sim.tick()
        [event] = card_events(sim)
        assert event["type"] == "refund.failed"
        assert event["data"]["failure_reason"] == "refund_declined"

    def test_magic_amount_96_is_followed_by_a_chargeback(self, sim: Harness) -> None:
        """An amount ending 96 succeeds, then a chargeback.created arrives on the payment."""
        post_refund(sim, refund_body(amount=1096))
        sim.advance(30)
        sim.tick()
        sim.advance(600)
        assert sim.tick()["chargebacks"] == 1
        succeeded, chargeback = card_events(sim)
        assert succeeded["type"] == "refund.succeeded"
        assert chargeback["type"] == "chargeback.created"
        assert chargeback["data"]["payment_reference"] == "psp_pay_1"
        assert chargeback["data"]["amount"] == {"amount": 1096, "currency": "EUR"}

    def test_control_chargeback_sends_a_webhook(self, sim: Harness) -> None:
        """POST /control/card/chargebacks raises a chargeback delivered at the next tick."""
        response = sim.client.post(
            "/control/card/chargebacks",
            json={"payment_reference": "psp_pay_9", "amount": {"amount": 1234, "currency": "KWD"}},
        )
        assert response.status_code == 201
        sim.tick()
        [event] = card_events(sim)
        assert event["type"] == "chargeback.created"
        assert event["data"]["id"] == response.json()["id"]
        assert event["data"]["amount"] == {"amount": 1234, "currency": "KWD"}


class TestSettlementReport:
    """GET /card/v1/settlement-report."""

    def settle_some(self, sim: Harness) -> None:
        """One succeeded refund, one failed refund and one chargeback on 2026-03-02."""
        post_refund(sim, refund_body("ref_1", 1999), key="k1")
        post_refund(sim, refund_body("ref_2", 1097), key="k2")
        sim.client.post(
            "/control/card/chargebacks",
            json={"payment_reference": "psp_pay_3", "amount": {"amount": 500, "currency": "JPY"}},
        )
        sim.advance(30)
        sim.tick()

    def test_json_report_lists_settled_items_and_totals(self, sim: Harness) -> None:
        """The JSON report holds the succeeded refund and the chargeback, not the failure."""
        self.settle_some(sim)
        report = sim.client.get("/card/v1/settlement-report", params={"date": "2026-03-02"})
        assert report.status_code == 200
        body = report.json()
        assert [(i["type"], i["payment_reference"]) for i in body["items"]] == [
            ("chargeback", "psp_pay_3"),
            ("refund", "psp_pay_1"),
        ]
        assert body["items"][0]["id"].startswith("cb_")
        assert body["totals"] == [
            {"currency": "EUR", "refunds": 1999, "chargebacks": 0, "count": 1},
            {"currency": "JPY", "refunds": 0, "chargebacks": 500, "count": 1},
        ]
        other_day = sim.client.get("/card/v1/settlement-report", params={"date": "2026-03-03"})
        assert other_day.json()["items"] == []

    def test_csv_report_has_minor_units(self, sim: Harness) -> None:
        """With Accept: text/csv the report is CSV with integer minor units."""
        self.settle_some(sim)
        report = sim.client.get(
            "/card/v1/settlement-report",
            params={"date": "2026-03-02"},
            headers={"accept": "text/csv"},
        )
        assert report.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(report.text)))
        assert [(r["type"], r["amount_minor"], r["currency"]) for r in rows] == [
            ("chargeback", "500", "JPY"),
            ("refund", "1999", "EUR"),
        ]
