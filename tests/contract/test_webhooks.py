"""Standard Webhooks verification of callbacks signed by the simulator (both rails)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from adapters.bank.iso20022 import Iso20022BankRail
from adapters.card.acquirer import AcquirerCardRail
from adapters.transport import RetryPolicy
from adapters.webhooks import WEBHOOK_TOLERANCE, verify
from escrow.errors import ConfigurationError
from escrow.money import Money
from escrow.ports import BankEventKind, CardEventKind, CardRefund, CreditTransfer, WebhookRejected
from simulators import CallbackRequest
from tests.contract.worlds import (
    BANK_URL,
    CARD_URL,
    CREDITOR,
    DEBTOR,
    OTHER_SECRET,
    SECRET,
    SETTLE_DELAY_S,
    Simulator,
)


@pytest.fixture
def bank_callback(sim: Simulator) -> CallbackRequest:
    """A real camt.054 callback, signed by the simulator, about a booked transfer."""
    rail = Iso20022BankRail(sim.client, debtor=DEBTOR, clock=sim.clock, retry=RetryPolicy(sleep=lambda _s: None))
    rail.send_credit_transfer(CreditTransfer("pay-wh-1", Money(1999, "EUR"), CREDITOR, "payout"))
    sim.advance(SETTLE_DELAY_S, BANK_URL)
    (callback,) = [r for r in sim.sender.requests if r.url == BANK_URL]
    return callback


def _rejection(callback: CallbackRequest, **changes: object) -> WebhookRejected:
    headers = dict(callback.headers)
    body = callback.body
    for name, value in changes.items():
        if name == "body":
            assert isinstance(value, bytes)
            body = value
        elif value is None:
            headers.pop(name.replace("_", "-"))
        else:
            headers[name.replace("_", "-")] = str(value)
    with pytest.raises(WebhookRejected) as raised:
        verify(headers, body, [SECRET], now=_signed_at(callback))
    return raised.value


def _signed_at(callback: CallbackRequest) -> datetime:
    """The moment the simulator signed `callback` (its webhook-timestamp)."""
    return datetime.fromtimestamp(int(callback.headers["webhook-timestamp"]), UTC)


class TestWebhookVerification:
    def test_accepts_a_simulator_signed_bank_callback(self, sim: Simulator, bank_callback: CallbackRequest) -> None:
        """A camt.054 signed by the simulator verifies, returns its webhook-id, and parses as booked."""
        webhook_id = verify(bank_callback.headers, bank_callback.body, [SECRET], now=sim.clock.now())

        assert webhook_id == bank_callback.headers["webhook-id"]
        rail = Iso20022BankRail(sim.client, debtor=DEBTOR)
        assert [e.kind for e in rail.parse_notification(bank_callback.body)] == [BankEventKind.BOOKED]

    def test_accepts_a_simulator_signed_card_callback(self, sim: Simulator) -> None:
        """An acquirer webhook signed by the simulator verifies, and its body id is the webhook-id."""
        rail = AcquirerCardRail(sim.client, retry=RetryPolicy(sleep=lambda _s: None))
        rail.refund(CardRefund("ref_wh_1", "pi_1", Money(500, "JPY")))
        sim.advance(60, CARD_URL)
        (callback,) = [r for r in sim.sender.requests if r.url == CARD_URL]

        webhook_id = verify(callback.headers, callback.body, [SECRET], now=sim.clock.now())

        (event,) = rail.parse_webhook(callback.body)
        assert (event.kind, event.event_id) == (CardEventKind.REFUND_SUCCEEDED, webhook_id)

    def test_rejects_a_tampered_body(self, bank_callback: CallbackRequest) -> None:
        """Changing one byte of the body breaks the signature."""
        tampered = bank_callback.body.replace(b"19.99", b"99.99")
        assert tampered != bank_callback.body

        assert _rejection(bank_callback, body=tampered).reason == "bad_signature"

    def test_rejects_a_wrong_secret(self, bank_callback: CallbackRequest) -> None:
        """A callback signed with a secret we do not hold is refused."""
        with pytest.raises(WebhookRejected) as raised:
            verify(bank_callback.headers, bank_callback.body, [OTHER_SECRET], now=_signed_at(bank_callback))

        assert raised.value.reason == "bad_signature"

    def test_accepts_any_secret_in_rotation(self, bank_callback: CallbackRequest) -> None:
        """During a rotation both the new and the old secret are accepted."""
        webhook_id = verify(
            bank_callback.headers, bank_callback.body, [OTHER_SECRET, SECRET], _signed_at(bank_callback)
        )

        assert webhook_id == bank_callback.headers["webhook-id"]

    @pytest.mark.parametrize(
        "offset", [WEBHOOK_TOLERANCE + timedelta(seconds=1), -WEBHOOK_TOLERANCE - timedelta(seconds=1)]
    )
    def test_rejects_a_stale_or_future_timestamp(self, bank_callback: CallbackRequest, offset: timedelta) -> None:
        """A timestamp more than five minutes from now, either way, is refused as stale."""
        with pytest.raises(WebhookRejected) as raised:
            verify(bank_callback.headers, bank_callback.body, [SECRET], now=_signed_at(bank_callback) + offset)

        assert raised.value.reason == "stale"

    def test_accepts_a_timestamp_at_the_edge_of_the_tolerance(self, bank_callback: CallbackRequest) -> None:
        """Exactly five minutes late is still fresh."""
        now = _signed_at(bank_callback) + WEBHOOK_TOLERANCE

        assert verify(bank_callback.headers, bank_callback.body, [SECRET], now=now)

    @pytest.mark.parametrize("header", ["webhook_id", "webhook_timestamp", "webhook_signature"])
    def test_rejects_a_missing_header(self, bank_callback: CallbackRequest, header: str) -> None:
        """Each of the three headers is required."""
        assert _rejection(bank_callback, **{header: None}).reason == "missing_header"

    def test_rejects_a_malformed_timestamp(self, bank_callback: CallbackRequest) -> None:
        """A timestamp that is not Unix seconds is refused before any HMAC is computed."""
        assert _rejection(bank_callback, webhook_timestamp="2026-03-02T09:00:00Z").reason == "malformed_header"

    def test_rejects_a_signature_for_another_webhook_id(self, bank_callback: CallbackRequest) -> None:
        """The id is signed too: replaying a body under a fresh id (to dodge deduplication) fails."""
        assert _rejection(bank_callback, webhook_id="msg_replayed").reason == "bad_signature"

    def test_ignores_unknown_signature_versions_and_garbage(self, bank_callback: CallbackRequest) -> None:
        """Only v1 signatures count; unparseable entries next to a valid one do not break verification."""
        header = f"v2,abc v1,!!! {bank_callback.headers['webhook-signature']}"
        headers = {**bank_callback.headers, "webhook-signature": header}

        assert verify(headers, bank_callback.body, [SECRET], now=_signed_at(bank_callback))

    def test_matches_the_spec_computed_by_hand(self, bank_callback: CallbackRequest) -> None:
        """The signature is HMAC-SHA256 of id.timestamp.body keyed with the base64 part of the secret."""
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        h = bank_callback.headers
        to_sign = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + bank_callback.body
        mine = "v1," + base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode()
        headers = {**h, "webhook-signature": mine}

        assert verify(headers, bank_callback.body, [SECRET], now=_signed_at(bank_callback)) == h["webhook-id"]

    def test_refuses_to_run_without_secrets(self, bank_callback: CallbackRequest) -> None:
        """No configured secret is a configuration error, not a silently accepted callback."""
        with pytest.raises(ConfigurationError):
            verify(bank_callback.headers, bank_callback.body, [], now=_signed_at(bank_callback))
