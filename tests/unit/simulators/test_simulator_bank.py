"""The simulated bank: pain.001 in, pain.002 / camt.054 / camt.053 out, on a driven clock."""

from __future__ import annotations

from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.unit.simulators.builders import (
    BAD_CHECKSUM_IBAN,
    BANK_URL,
    CLOSED_IBAN,
    DEBTOR_IBAN,
    NS,
    SECRET,
    Harness,
    a_payment,
    raw_pain001,
    sepa_pain001,
    tx_statuses,
    xml,
)


def bank_transfers(sim: Harness) -> dict[str, Any]:
    """Transfers of the simulator's books by EndToEndId."""
    return {t["end_to_end_id"]: t for t in sim.ledger()["bank"]["transfers"]}


class TestCreditTransferAcceptance:
    """POST /bank/v1/credit-transfers."""

    @pytest.mark.parametrize("schema", ["pain.001.001.03", "pain.001.001.09"])
    def test_accepts_sepaxml_output(self, sim: Harness, schema: str) -> None:
        """A pain.001 written by sepaxml in either version is accepted with ACSP."""
        response = sim.post_pain001(sepa_pain001([a_payment("pay_1")], schema=schema))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/xml")
        assert tx_statuses(response.content) == {"pay_1": ("ACSP", None)}
        assert bank_transfers(sim)["pay_1"]["amount"] == {"amount": 1999, "currency": "EUR"}

    def test_replay_books_once(self, sim: Harness) -> None:
        """The same EndToEndId and content, even in a rebuilt file, is executed only once."""
        first = sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        again = sim.post_pain001(sepa_pain001([a_payment("pay_1")]))  # new MsgId, new PmtInfId
        assert first.status_code == again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        assert tx_statuses(again.content) == {"pay_1": ("ACSP", None)}
        transfer = bank_transfers(sim)["pay_1"]
        assert (transfer["requests"], transfer["executions"]) == (2, 1)
        assert sim.ledger()["bank"]["totals"][0]["executed"] == 1999

    def test_conflicting_replay_is_409_and_changes_nothing(self, sim: Harness) -> None:
        """The same EndToEndId with another amount is refused with 409, the whole message."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        response = sim.post_pain001(sepa_pain001([a_payment("pay_2"), a_payment("pay_1", amount=2000)]))
        assert response.status_code == 409
        assert response.json()["code"] == "end_to_end_id_conflict"
        assert set(bank_transfers(sim)) == {"pay_1"}

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"<Document><unclosed>", "malformed_xml"),
            (b"not xml at all", "malformed_xml"),
            (
                b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>',
                "malformed_xml",
            ),
            (b'<Document xmlns="urn:other"/>', "unsupported_message"),
            (
                b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"><CstmrCdtTrfInitn/></Document>',
                "schema_invalid",
            ),
        ],
    )
    def test_unreadable_document_is_400(self, sim: Harness, body: bytes, code: str) -> None:
        """Malformed, entity-laden, foreign or schema-invalid XML is a 400 problem."""
        response = sim.post_pain001(body)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == code
        assert sim.ledger()["bank"]["transfers"] == []

    def test_missing_end_to_end_id_is_400(self, sim: Harness) -> None:
        """sepaxml's default EndToEndId NOTPROVIDED cannot be deduplicated, so it is refused."""
        body = sepa_pain001([{"description": "no id"}])
        response = sim.post_pain001(body)
        assert response.status_code == 400
        assert response.json()["code"] == "end_to_end_id_required"

    def test_bad_creditor_iban_is_rejected_not_crashed(self, sim: Harness) -> None:
        """A creditor IBAN with a wrong checksum gets RJCT AC01 in a pain.002."""
        response = sim.post_pain001(sepa_pain001([a_payment("pay_1", IBAN=BAD_CHECKSUM_IBAN)]))
        assert response.status_code == 200
        assert tx_statuses(response.content) == {"pay_1": ("RJCT", "AC01")}
        assert bank_transfers(sim)["pay_1"]["executions"] == 0

    def test_bad_creditor_bic_is_rejected(self, sim: Harness) -> None:
        """A creditor BIC with an unknown country gets RJCT RC01."""
        response = sim.post_pain001(sepa_pain001([a_payment("pay_1", BIC="COBAZZFFXXX")]))
        assert tx_statuses(response.content) == {"pay_1": ("RJCT", "RC01")}

    def test_closed_account_magic_iban_is_rejected(self, sim: Harness) -> None:
        """A valid creditor IBAN ending 0000 is rejected with AC04 (closed account)."""
        response = sim.post_pain001(sepa_pain001([a_payment("pay_1", IBAN=CLOSED_IBAN)]))
        assert tx_statuses(response.content) == {"pay_1": ("RJCT", "AC04")}

    def test_mixed_message_reports_each_transaction(self, sim: Harness) -> None:
        """One good and one bad transaction give PART, ACSP and RJCT."""
        body = sepa_pain001([a_payment("pay_1"), a_payment("pay_2", IBAN=CLOSED_IBAN)])
        response = sim.post_pain001(body)
        assert xml(response.content).findtext(".//p2:GrpSts", namespaces=NS) == "PART"
        assert tx_statuses(response.content) == {
            "pay_1": ("ACSP", None),
            "pay_2": ("RJCT", "AC04"),
        }

    @pytest.mark.parametrize(
        ("amount", "currency", "reason"),
        [("5.01", "JPY", "AM12"), ("1.2345", "KWD", "AM12"), ("0.00", "EUR", "AM01")],
    )
    def test_amount_not_exact_in_currency_is_rejected(
        self, sim: Harness, amount: str, currency: str, reason: str
    ) -> None:
        """An amount with more decimals than its currency allows is rejected, never rounded."""
        body = raw_pain001([("pay_1", amount, currency, DEBTOR_IBAN)])
        response = sim.post_pain001(body)
        assert tx_statuses(response.content) == {"pay_1": ("RJCT", reason)}

    def test_sepaxml_writes_two_decimals_whatever_the_currency(self, sim: Harness) -> None:
        """sepaxml turns 500 JPY into "5.00", which the bank reads as 5 yen: adapters beware."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1", amount=500)], currency="JPY"))
        assert bank_transfers(sim)["pay_1"]["amount"] == {"amount": 5, "currency": "JPY"}


class TestTransferStatus:
    """GET /bank/v1/credit-transfers/{end_to_end_id}."""

    def test_unknown_transfer_is_404(self, sim: Harness) -> None:
        """A transfer the bank never received answers 404, which resolves "outcome unknown"."""
        response = sim.client.get("/bank/v1/credit-transfers/pay_404")
        assert response.status_code == 404
        assert response.json()["code"] == "transfer_not_found"

    def test_status_moves_from_acsp_to_acsc_on_the_clock(self, sim: Harness) -> None:
        """A transfer settles only once the clock has passed the settle delay and a tick ran."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        sim.advance(59)
        sim.tick()
        status = sim.client.get("/bank/v1/credit-transfers/pay_1")
        assert tx_statuses(status.content) == {"pay_1": ("ACSP", None)}
        sim.advance(1)
        assert sim.tick()["settled"] == 1
        status = sim.client.get("/bank/v1/credit-transfers/pay_1")
        assert tx_statuses(status.content) == {"pay_1": ("ACSC", None)}


class TestSettlementCallback:
    """The camt.054 debit notification sent when a transfer is booked."""

    def test_booking_sends_a_signed_camt054(self, sim: Harness) -> None:
        """Settlement POSTs a camt.054 DBIT that verifies with the standardwebhooks package."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        sim.tick()
        assert sim.sender.requests == []
        sim.advance(60)
        assert sim.tick()["callbacks_delivered"] == 1
        [callback] = sim.callbacks_of(BANK_URL)
        Webhook(SECRET).verify(callback.body, callback.headers, json_parse=False)
        entry = xml(callback.body).find(".//c54:Ntry", NS)
        assert entry.findtext("c54:CdtDbtInd", namespaces=NS) == "DBIT"
        assert entry.findtext("c54:Sts", namespaces=NS) == "BOOK"
        assert entry.find("c54:Amt", NS).text == "19.99"
        assert entry.find("c54:Amt", NS).get("Ccy") == "EUR"
        assert entry.findtext(".//c54:EndToEndId", namespaces=NS) == "pay_1"
        assert entry.findtext(".//c54:BookgDt/c54:Dt", namespaces=NS) == "2026-03-02"

    def test_tampered_body_fails_verification(self, sim: Harness) -> None:
        """The signature covers the body: one changed byte fails verification."""
        from standardwebhooks.webhooks import WebhookVerificationError

        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        sim.advance(60)
        sim.tick()
        [callback] = sim.callbacks_of(BANK_URL)
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(callback.body.replace(b"19.99", b"91.99"), callback.headers)

    def test_failed_delivery_is_retried_with_backoff(self, sim: Harness) -> None:
        """A receiver answering 500 gets the same webhook-id again after the backoff."""
        sim.sender.status_code = 500
        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        sim.advance(60)
        assert sim.tick()["callbacks_failed"] == 1
        sim.sender.status_code = 204
        assert sim.tick()["callbacks_delivered"] == 0  # backoff not yet over
        sim.advance(sim.config.callback_retry_base_s)
        assert sim.tick()["callbacks_delivered"] == 1
        first, second = sim.callbacks_of(BANK_URL)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        [state] = sim.client.get("/control/callbacks").json()
        assert (state["attempts"], state["deliveries"]) == (2, 1)


class TestReturns:
    """A settled transfer returned by the creditor's bank."""

    def test_magic_amount_96_is_returned_after_the_return_delay(self, sim: Harness) -> None:
        """An amount ending 96 settles, then a camt.054 CRDT with RtrInf AC04 follows."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1", amount=1096)]))
        sim.advance(60)
        sim.tick()
        sim.advance(3600)
        assert sim.tick()["returned"] == 1
        _, returned = sim.callbacks_of(BANK_URL)
        Webhook(SECRET).verify(returned.body, returned.headers, json_parse=False)
        entry = xml(returned.body).find(".//c54:Ntry", NS)
        assert entry.findtext("c54:CdtDbtInd", namespaces=NS) == "CRDT"
        assert entry.findtext(".//c54:RtrInf/c54:Rsn/c54:Cd", namespaces=NS) == "AC04"
        assert entry.findtext(".//c54:SubFmlyCd", namespaces=NS) == "RRTN"
        assert entry.find("c54:Amt", NS).text == "10.96"
        totals = sim.ledger()["bank"]["totals"][0]
        assert (totals["booked"], totals["returned"], totals["net_moved"]) == (1096, 1096, 0)

    def test_control_endpoint_returns_a_settled_transfer(self, sim: Harness) -> None:
        """POST /control/bank/returns returns a booked transfer with the given reason."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        early = sim.client.post("/control/bank/returns", json={"end_to_end_id": "pay_1"})
        assert early.status_code == 409
        sim.advance(60)
        sim.tick()
        response = sim.client.post("/control/bank/returns", json={"end_to_end_id": "pay_1", "reason_code": "MD07"})
        assert response.status_code == 200
        assert response.json()["return_reason"] == "MD07"
        sim.tick()
        _, returned = sim.callbacks_of(BANK_URL)
        assert b"<Cd>MD07</Cd>" in returned.body
        status = sim.client.get("/bank/v1/credit-transfers/pay_1")
        assert status.headers["x-simulator-returned"] == "true"
        assert tx_statuses(status.content) == {"pay_1": ("ACSC", "MD07")}

    def test_magic_amount_97_fails_at_settlement(self, sim: Harness) -> None:
        """An amount ending 97 is accepted, then rejected AM04 by a signed pain.002 callback."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1", amount=1097)]))
        sim.advance(60)
        sim.tick()
        [callback] = sim.callbacks_of(BANK_URL)
        Webhook(SECRET).verify(callback.body, callback.headers, json_parse=False)
        assert tx_statuses(callback.body) == {"pay_1": ("RJCT", "AM04")}
        assert sim.ledger()["bank"]["totals"][0]["booked"] == 0


class TestStatements:
    """GET /bank/v1/statements (camt.053)."""

    def test_statement_lists_booked_entries_with_exact_amounts(self, sim: Harness) -> None:
        """JPY (0 decimals), KWD (3) and EUR entries appear with exact decimal strings."""
        body = raw_pain001(
            [
                ("pay_jpy", "1999", "JPY", "FR1420041010050500013M02606"),
                ("pay_kwd", "1.234", "KWD", "FR1420041010050500013M02606"),
                ("pay_eur", "0.05", "EUR", "FR1420041010050500013M02606"),
                ("pay_eur2", "1000000.00", "EUR", "FR1420041010050500013M02606"),
            ]
        )
        assert sim.post_pain001(body).status_code == 200
        sim.advance(60)
        sim.tick()
        response = sim.client.get("/bank/v1/statements", params={"date": "2026-03-02"})
        assert response.status_code == 200
        statements = {
            stmt.findtext("c53:Acct/c53:Ccy", namespaces=NS): stmt
            for stmt in xml(response.content).iterfind(".//c53:Stmt", NS)
        }
        assert set(statements) == {"EUR", "JPY", "KWD"}
        amounts = {
            ccy: sorted(e.find("c53:Amt", NS).text for e in stmt.iterfind("c53:Ntry", NS))
            for ccy, stmt in statements.items()
        }
        assert amounts == {"EUR": ["0.05", "1000000.00"], "JPY": ["1999"], "KWD": ["1.234"]}
        closing = statements["KWD"].find("c53:Bal[2]", NS)
        assert closing.findtext(".//c53:Cd", namespaces=NS) == "CLBD"
        assert closing.find("c53:Amt", NS).text == "1.234"
        assert closing.findtext("c53:CdtDbtInd", namespaces=NS) == "DBIT"

    def test_statement_of_a_later_day_carries_the_opening_balance(self, sim: Harness) -> None:
        """Entries of earlier days are in the opening balance, not in the entries."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        sim.advance(86400)
        sim.tick()  # booked at the settle time, on 2026-03-02
        sim.post_pain001(sepa_pain001([a_payment("pay_2", amount=500)]))
        sim.advance(60)
        sim.tick()
        response = sim.client.get("/bank/v1/statements", params={"date": "2026-03-03"})
        [stmt] = xml(response.content).iterfind(".//c53:Stmt", NS)
        opening, closing = stmt.iterfind("c53:Bal", NS)
        assert opening.find("c53:Amt", NS).text == "19.99"
        assert closing.find("c53:Amt", NS).text == "24.99"
        assert [e.findtext(".//c53:EndToEndId", namespaces=NS) for e in stmt.iterfind("c53:Ntry", NS)] == ["pay_2"]
        ranged = sim.client.get("/bank/v1/statements", params={"from": "2026-03-02", "to": "2026-03-03"})
        assert ranged.content.count(b"<Ntry>") == 2

    def test_statement_needs_a_date(self, sim: Harness) -> None:
        """Without a date or range the request is a 422 problem."""
        assert sim.client.get("/bank/v1/statements").status_code == 422
        assert sim.client.get("/bank/v1/statements", params={"date": "x"}).status_code == 422
