"""What only the real adapters have: the wire format, HTTP error mapping and the retry log.

The behaviour tables (test_bank_rail.py, test_card_rail.py) cover what every implementation
promises; these tests pin down how the HTTP adapters keep those promises.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import httpx
import pytest
import structlog
from lxml import etree  # type: ignore[import-untyped]  # no stubs; reading our own output

from adapters.bank.iso20022 import Iso20022BankRail, wire
from adapters.card.acquirer import AcquirerCardRail
from adapters.transport import ADAPTER_ATTEMPTS_MAX, RetryPolicy
from escrow.errors import ConfigurationError
from escrow.money import Money
from escrow.ports import (
    BankAccount,
    CardRefund,
    CreditTransfer,
    InvalidInstruction,
    OutcomeUnknown,
    RailMessageUnreadable,
    RailRequestRefused,
    RailUnavailable,
    RefundState,
    TransferState,
)
from tests.contract.worlds import CREDITOR, DEBTOR, SETTLE_DELAY_S, Simulator, Sleeps

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def instructed_amount(body: bytes) -> tuple[str, str, str]:
    """(InstdAmt text, its Ccy, GrpHdr CtrlSum) of a pain.001 we wrote."""
    root = etree.fromstring(body)
    ns = {"p": root.nsmap[None]}
    amount = root.find(".//p:CdtTrfTxInf/p:Amt/p:InstdAmt", ns)
    return amount.text, amount.get("Ccy"), root.findtext(".//p:GrpHdr/p:CtrlSum", namespaces=ns)


def bank_rail(client: httpx.Client, sleeps: Sleeps | None = None) -> Iso20022BankRail:
    return Iso20022BankRail(client, debtor=DEBTOR, retry=RetryPolicy(sleep=sleeps or Sleeps()))


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://bank.test")


class TestPain001:
    @pytest.mark.parametrize(
        ("amount", "text"),
        [
            (Money(500, "JPY"), "500"),
            (Money(1234, "KWD"), "1.234"),
            (Money(5, "KWD"), "0.005"),
            (Money(1999, "EUR"), "19.99"),
            (Money(1, "EUR"), "0.01"),
            (Money(10**15, "BHD"), "1000000000000.000"),
        ],
        ids=str,
    )
    @pytest.mark.parametrize("schema", ["pain.001.001.03", "pain.001.001.09"])
    def test_amounts_are_written_with_the_currency_exponent(
        self, amount: Money, text: str, schema: wire.Pain001Schema
    ) -> None:
        """Unlike sepaxml's fixed two decimals, JPY has none and KWD three, and the file passes its XSD."""
        body = wire.render_pain001(
            CreditTransfer("pay-w-1", amount, CREDITOR, "payout"),
            DEBTOR,
            message_id="M1",
            created_at=NOW,
            execution_date=NOW.date(),
            schema=schema,
        )

        assert instructed_amount(body) == (text, amount.currency, text)

    def test_the_simulator_reads_a_pain001_09_exactly(self, sim: Simulator) -> None:
        """A pain.001.001.09 in KWD is accepted and booked as the same number of fils."""
        rail = Iso20022BankRail(sim.client, debtor=DEBTOR, schema="pain.001.001.09", retry=RetryPolicy(sleep=Sleeps()))

        rail.send_credit_transfer(CreditTransfer("pay-w-2", Money(1234, "KWD"), CREDITOR))
        sim.advance(SETTLE_DELAY_S, "unused")

        (row,) = sim.ledger()["bank"]["transfers"]
        assert (row["amount"], row["amount_text"]) == ({"amount": 1234, "currency": "KWD"}, "1.234")

    def test_a_name_the_schema_refuses_is_an_input_error_before_any_call(self) -> None:
        """Text that no pain.001 can carry is refused with InvalidInstruction, not sent."""
        with pytest.raises(InvalidInstruction):
            CreditTransfer("pay-w-3", Money(1, "EUR"), BankAccount(CREDITOR.iban, "Tab\there"))
        with pytest.raises(InvalidInstruction):
            CreditTransfer("x" * 36, Money(1, "EUR"), CREDITOR)
        with pytest.raises(InvalidInstruction):
            CreditTransfer("NOTPROVIDED", Money(1, "EUR"), CREDITOR)

    def test_an_invalid_debtor_account_is_a_configuration_error(self) -> None:
        """The platform's own account is checked when the adapter is built."""
        with pytest.raises(ConfigurationError):
            Iso20022BankRail(httpx.Client(), debtor=BankAccount("DE00370400440532013000", "Escrow"))


class TestInboundXml:
    def test_a_dtd_is_refused(self) -> None:
        """Entity expansion (billion laughs) never runs: any DTD makes the message unreadable."""
        bomb = (
            b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.02">&b;</Document>'
        )
        with pytest.raises(RailMessageUnreadable):
            wire.parse_notification(bomb)

    def test_an_amount_finer_than_its_currency_is_refused(self) -> None:
        """5.01 JPY is not rounded to 5 yen: the message is unreadable."""
        with pytest.raises(RailMessageUnreadable):
            wire.parse_amount("5.01", "JPY")
        assert wire.parse_amount("500.00", "JPY") == Money(500, "JPY")
        assert wire.parse_amount("1.234", "KWD") == Money(1234, "KWD")

    def test_another_message_type_is_refused(self) -> None:
        """A camt.053 is no notification, and a pain.002 is no statement."""
        statement = (
            b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt>'
            b"<GrpHdr><MsgId>S1</MsgId></GrpHdr></BkToCstmrStmt></Document>"
        )
        assert wire.parse_camt053(statement).accounts == ()
        with pytest.raises(RailMessageUnreadable):
            wire.parse_notification(statement)


class TestHttpErrorMapping:
    def test_connection_drop_after_execution_is_outcome_unknown(self, sim: Simulator) -> None:
        """A connection cut mid-response is OutcomeUnknown, not retried, and the transfer executed once."""
        sim.control(
            "POST", "faults", json={"operation": "bank.credit_transfer", "fault": "drop_connection", "match": "pay-h-1"}
        )
        sleeps = Sleeps()
        rail = bank_rail(sim.client, sleeps)

        with pytest.raises(OutcomeUnknown):
            rail.send_credit_transfer(CreditTransfer("pay-h-1", Money(1999, "EUR"), CREDITOR))

        assert sleeps.calls == []
        assert rail.transfer_status("pay-h-1").state is TransferState.ACCEPTED
        assert sim.ledger()["executions"]["bank:pay-h-1"] == 1

    def test_a_500_on_an_instruction_is_outcome_unknown_and_not_retried(self, sim: Simulator) -> None:
        """Only 503 and 429 mean "not processed"; a 500 may hide an execution, so the caller must ask."""
        sim.control(
            "POST",
            "faults",
            json={"operation": "card.refund", "fault": "error_5xx", "status_code": 500, "match": "ref_h_1"},
        )
        sleeps = Sleeps()
        rail = AcquirerCardRail(sim.client, retry=RetryPolicy(sleep=sleeps))

        with pytest.raises(OutcomeUnknown):
            rail.refund(CardRefund("ref_h_1", "pi_1", Money(1999, "EUR")))

        assert sleeps.calls == []
        assert rail.refund_status("ref_h_1").state is RefundState.UNKNOWN

    def test_each_retry_logs_one_line_and_waits(self, sim: Simulator) -> None:
        """Two 503s then success: two retry log lines, two waits, one execution."""
        sim.control(
            "POST",
            "faults",
            json={"operation": "bank.credit_transfer", "fault": "error_5xx", "status_code": 503, "times": 2},
        )
        sleeps = Sleeps()
        rail = bank_rail(sim.client, sleeps)

        with structlog.testing.capture_logs() as logs:
            receipt = rail.send_credit_transfer(CreditTransfer("pay-h-2", Money(1999, "EUR"), CREDITOR))

        assert receipt.state is TransferState.ACCEPTED
        retries = [line for line in logs if line["event"] == "rail_call_retried"]
        assert [(r["operation"], r["key"], r["attempt"]) for r in retries] == [
            ("bank.send_credit_transfer", "pay-h-2", 1),
            ("bank.send_credit_transfer", "pay-h-2", 2),
        ]
        assert len(sleeps.calls) == 2 and all(0 <= s <= 8.0 for s in sleeps.calls)
        assert not any("FR14" in str(line) for line in logs)  # no account number in any log line

    def test_read_timeout_on_an_instruction_is_outcome_unknown_after_one_attempt(self) -> None:
        """A timeout after sending is never retried blindly."""
        calls: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            raise httpx.ReadTimeout("no answer", request=request)

        with pytest.raises(OutcomeUnknown):
            bank_rail(mock_client(handler)).send_credit_transfer(CreditTransfer("pay-h-3", Money(1, "EUR"), CREDITOR))
        assert len(calls) == 1

    def test_connection_refused_is_retried_then_unavailable(self) -> None:
        """Nothing left the process, so it is retried, at most ADAPTER_ATTEMPTS_MAX times in all."""
        calls: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            raise httpx.ConnectError("refused", request=request)

        with pytest.raises(RailUnavailable):
            bank_rail(mock_client(handler)).send_credit_transfer(CreditTransfer("pay-h-4", Money(1, "EUR"), CREDITOR))
        assert len(calls) == ADAPTER_ATTEMPTS_MAX

    def test_a_query_failing_with_5xx_or_timeout_is_retried(self) -> None:
        """Reading a status changes nothing, so a 500 or a timeout there is safe to retry."""
        answers = iter([httpx.Response(500), httpx.Response(502), None, httpx.Response(404)])

        def handler(request: httpx.Request) -> httpx.Response:
            answer = next(answers)
            if answer is None:
                raise httpx.ReadTimeout("slow", request=request)
            return answer

        assert bank_rail(mock_client(handler)).transfer_status("pay-h-5").state is TransferState.UNKNOWN

    def test_a_garbled_2xx_on_an_instruction_is_outcome_unknown(self) -> None:
        """A 200 whose body cannot be read may hide an execution: OutcomeUnknown, not a guess."""
        client = mock_client(lambda _r: httpx.Response(200, content=b"<oops"))

        with pytest.raises(OutcomeUnknown):
            bank_rail(client).send_credit_transfer(CreditTransfer("pay-h-6", Money(1, "EUR"), CREDITOR))

    def test_a_4xx_is_refused_and_not_retried(self) -> None:
        """A 400 means our request was wrong: RailRequestRefused at once, with the problem code."""
        calls: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            return httpx.Response(400, json={"code": "schema_invalid"})

        with pytest.raises(RailRequestRefused, match="schema_invalid"):
            bank_rail(mock_client(handler)).send_credit_transfer(CreditTransfer("pay-h-7", Money(1, "EUR"), CREDITOR))
        assert len(calls) == 1

    def test_statement_goes_to_the_debtor_account(self) -> None:
        """The statement query names the day and the platform's account."""
        seen: list[httpx.URL] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request.url)
            return httpx.Response(503)

        with pytest.raises(RailUnavailable):
            bank_rail(mock_client(handler)).statement(date(2026, 3, 2))
        assert seen[0].params["date"] == "2026-03-02" and seen[0].params["account"] == DEBTOR.iban
        assert len(seen) == ADAPTER_ATTEMPTS_MAX
