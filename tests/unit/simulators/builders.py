"""Builders for the simulator tests: a harness with a manual clock, pain.001 documents."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import defusedxml.ElementTree as DET  # type: ignore[import-untyped]  # no stubs published
from fastapi.testclient import TestClient
from sepaxml import SepaTransfer  # type: ignore[import-untyped]  # no py.typed marker

from simulators import RecordingSender, SimClock, SimulatorConfig, create_app

SECRET = "whsec_" + base64.b64encode(b"simulator-unit-test-secret-0001").decode()
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
DEBTOR_IBAN = "DE89370400440532013000"
GOOD_CREDITOR_IBAN = "FR1420041010050500013M02606"
CLOSED_IBAN = "DE94370400440532010000"  # valid checksum, ends 0000: rejected AC04
BAD_CHECKSUM_IBAN = "DE00370400440532013000"
BANK_URL = "http://service.test/v1/webhooks/bank"
CARD_URL = "http://service.test/v1/webhooks/card"

NS = {
    "p2": "urn:iso:std:iso:20022:tech:xsd:pain.002.001.03",
    "c54": "urn:iso:std:iso:20022:tech:xsd:camt.054.001.02",
    "c53": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02",
}


@dataclass
class Sleeps:
    """A fake `sleep` that records durations instead of waiting."""

    calls: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@dataclass
class Harness:
    """The app under test and what it touches."""

    client: TestClient
    clock: SimClock
    sender: RecordingSender
    sleeps: Sleeps
    config: SimulatorConfig

    def advance(self, seconds: float) -> None:
        """Move the simulator's clock through the control API."""
        response = self.client.post("/control/clock", json={"advance_s": seconds})
        assert response.status_code == 200, response.text

    def tick(self) -> dict[str, int]:
        """Process due work through the control API."""
        response = self.client.post("/control/tick")
        assert response.status_code == 200, response.text
        result: dict[str, int] = response.json()
        return result

    def ledger(self) -> dict[str, Any]:
        """The simulator's books."""
        result: dict[str, Any] = self.client.get("/control/ledger").json()
        return result

    def post_pain001(self, body: bytes) -> Any:
        """POST a pain.001 to the bank."""
        return self.client.post(
            "/bank/v1/credit-transfers",
            content=body,
            headers={"content-type": "application/xml"},
        )

    def callbacks_of(self, url: str) -> list[Any]:
        """Callback requests sent to `url`, in order."""
        return [r for r in self.sender.requests if r.url == url]


def make_harness(**overrides: Any) -> Harness:
    """Build an in-process simulator with a manual clock and a recording sender."""
    clock = SimClock.manual(START)
    sender = RecordingSender()
    sleeps = Sleeps()
    settings: dict[str, Any] = {
        "clock": clock,
        "bank_webhook_url": BANK_URL,
        "card_webhook_url": CARD_URL,
        "bank_webhook_secret": SECRET,
        "card_webhook_secret": SECRET,
        "settle_delay_s": 60.0,
        "return_delay_s": 3600.0,
        "card_settle_delay_s": 30.0,
        "chargeback_delay_s": 600.0,
        "callback_sender": sender,
        "sleep": sleeps,
        "timeout_s": 0.5,
        "slow_s": 0.2,
    }
    settings.update(overrides)
    config = SimulatorConfig(**settings)
    client = TestClient(create_app(config))
    return Harness(client, clock, sender, sleeps, config)


def sepa_pain001(payments: list[dict[str, Any]], schema: str = "pain.001.001.03", currency: str = "EUR") -> bytes:
    """A pain.001 exactly as the `sepaxml` library writes it (amounts in cents)."""
    transfer = SepaTransfer(
        {
            "name": "Marketplace Escrow",
            "IBAN": DEBTOR_IBAN,
            "BIC": "COBADEFFXXX",
            "batch": True,
            "currency": currency,
        },
        schema=schema,
    )
    for payment in payments:
        transfer.add_payment(
            {
                "name": "Seller GmbH",
                "IBAN": GOOD_CREDITOR_IBAN,
                "amount": 1999,
                "currency": currency,
                "execution_date": START.date(),
                "description": "payout",
                **payment,
            }
        )
    out: bytes = transfer.export(validate=True)
    return out


def a_payment(end_to_end_id: str, **overrides: Any) -> dict[str, Any]:
    """A sepaxml payment dict with a given EndToEndId."""
    return {"endtoend_id": end_to_end_id, "description": f"payout {end_to_end_id}", **overrides}


def raw_pain001(transactions: list[tuple[str, str, str, str]], msg_id: str = "MSG-1") -> bytes:
    """A hand-written pain.001.001.03 with exact amount strings: (e2e, amount, ccy, iban).

    Written by hand because sepaxml always writes two decimals, which is wrong for JPY and
    KWD; this builder lets tests state the exact decimal text the bank receives.
    """
    txs = "".join(
        f"<CdtTrfTxInf><PmtId><EndToEndId>{e2e}</EndToEndId></PmtId>"
        f'<Amt><InstdAmt Ccy="{ccy}">{amount}</InstdAmt></Amt>'
        f"<Cdtr><Nm>Seller</Nm></Cdtr><CdtrAcct><Id><IBAN>{iban}</IBAN></Id></CdtrAcct>"
        f"<RmtInf><Ustrd>payout {e2e}</Ustrd></RmtInf></CdtTrfTxInf>"
        for e2e, amount, ccy, iban in transactions
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03">'
        f"<CstmrCdtTrfInitn><GrpHdr><MsgId>{msg_id}</MsgId>"
        "<CreDtTm>2026-03-02T09:00:00</CreDtTm>"
        f"<NbOfTxs>{len(transactions)}</NbOfTxs><InitgPty><Nm>Escrow</Nm></InitgPty></GrpHdr>"
        "<PmtInf><PmtInfId>PMT-1</PmtInfId><PmtMtd>TRF</PmtMtd>"
        "<ReqdExctnDt>2026-03-02</ReqdExctnDt><Dbtr><Nm>Escrow</Nm></Dbtr>"
        f"<DbtrAcct><Id><IBAN>{DEBTOR_IBAN}</IBAN></Id></DbtrAcct>"
        "<DbtrAgt><FinInstnId><BIC>COBADEFFXXX</BIC></FinInstnId></DbtrAgt>"
        f"{txs}</PmtInf></CstmrCdtTrfInitn></Document>"
    ).encode()


def xml(body: bytes) -> Any:
    """Parse XML the safe way."""
    return DET.fromstring(body, forbid_dtd=True)


def tx_statuses(body: bytes) -> dict[str, tuple[str, str | None]]:
    """EndToEndId -> (TxSts, reason code) of a pain.002."""
    root = xml(body)
    result: dict[str, tuple[str, str | None]] = {}
    for line in root.iterfind(".//p2:TxInfAndSts", NS):
        reason = line.find("p2:StsRsnInf/p2:Rsn/p2:Cd", NS)
        result[line.findtext("p2:OrgnlEndToEndId", namespaces=NS)] = (
            line.findtext("p2:TxSts", namespaces=NS),
            None if reason is None else reason.text,
        )
    return result
