"""The CardRail contract, one behaviour per row, run against the fake and the acquirer adapter.

behaviour                                  result
refund, clock moves                        PENDING, then refund.succeeded with the exact amount
same refund id again                       replayed (same acquirer reference), executed once
same refund id, other amount               InstructionConflict, first one intact
issuer declines                            PENDING, then FAILED with a reason: a result
executed, answer lost                      OutcomeUnknown; status tells; resend is a replay
lost before processing                     OutcomeUnknown; status UNKNOWN; resend executes once
503 once / on every attempt                retried inside / RailUnavailable, nothing executed
chargeback                                 chargeback.created with amount, reason, payment
EUR / JPY / KWD                            exact minor units everywhere
settlement report                          succeeded refunds and chargebacks of the day
"""

from __future__ import annotations

import pytest

from adapters.fakes import Fault
from adapters.transport import ADAPTER_ATTEMPTS_MAX
from escrow.money import Money
from escrow.ports import (
    CardEventKind,
    CardRefund,
    InstructionConflict,
    OutcomeUnknown,
    RailMessageUnreadable,
    RailUnavailable,
    RefundState,
    SettlementItemKind,
)
from tests.contract.worlds import CARD_SETTLE_DELAY_S, TODAY, CardWorld


def a_refund(refund_id: str, amount: Money, payment_reference: str = "pi_order_1") -> CardRefund:
    return CardRefund(refund_id=refund_id, payment_reference=payment_reference, amount=amount)


def eur(amount_minor: int) -> Money:
    return Money(amount_minor, "EUR")


class TestCardRailContract:
    def test_refund_succeeds_after_the_clock_moves(self, card: CardWorld) -> None:
        """A refund is pending until it settles, then the webhook and the status both say succeeded, exactly."""
        receipt = card.rail.refund(a_refund("ref_1", eur(1999)))
        assert (receipt.state, receipt.replayed) == (RefundState.PENDING, False)
        assert receipt.acquirer_reference

        events = [e for body in card.advance(CARD_SETTLE_DELAY_S) for e in card.rail.parse_webhook(body)]

        assert [(e.kind, e.object_id, e.amount, e.payment_reference) for e in events] == [
            (CardEventKind.REFUND_SUCCEEDED, "ref_1", eur(1999), "pi_order_1")
        ]
        status = card.rail.refund_status("ref_1")
        assert (status.state, status.amount) == (RefundState.SUCCEEDED, eur(1999))
        assert card.refunded("EUR") == eur(1999)

    def test_replay_with_the_same_refund_id_executes_once(self, card: CardWorld) -> None:
        """The same refund sent twice is one refund: the second answer is a replay of the first."""
        first = card.rail.refund(a_refund("ref_2", eur(2550)))

        second = card.rail.refund(a_refund("ref_2", eur(2550)))

        assert (second.replayed, second.acquirer_reference) == (True, first.acquirer_reference)
        assert card.executions("ref_2") == 1
        card.advance(CARD_SETTLE_DELAY_S)
        assert card.refunded("EUR") == eur(2550)

    def test_same_refund_id_with_another_amount_is_a_conflict(self, card: CardWorld) -> None:
        """A reused refund id with other content is refused and the first refund stays as it was."""
        card.rail.refund(a_refund("ref_3", eur(1000)))

        with pytest.raises(InstructionConflict) as raised:
            card.rail.refund(a_refund("ref_3", eur(1001)))

        assert raised.value.key == "ref_3"
        assert card.rail.refund_status("ref_3").amount == eur(1000)
        assert card.executions("ref_3") == 1

    def test_decline_is_a_result_not_an_exception(self, card: CardWorld) -> None:
        """A declined refund is accepted, then FAILED with a reason in both the webhook and the status."""
        amount = card.arrange("ref_4", Fault.FAIL_AT_SETTLEMENT, eur(1900))
        assert card.rail.refund(a_refund("ref_4", amount)).state is RefundState.PENDING

        events = [e for body in card.advance(CARD_SETTLE_DELAY_S) for e in card.rail.parse_webhook(body)]

        assert [(e.kind, e.object_id, e.amount, e.reason_code) for e in events] == [
            (CardEventKind.REFUND_FAILED, "ref_4", amount, "refund_declined")
        ]
        status = card.rail.refund_status("ref_4")
        assert (status.state, status.failure_reason) == (RefundState.FAILED, "refund_declined")
        assert card.refunded("EUR") == eur(0)

    def test_response_lost_is_outcome_unknown_then_status_tells(self, card: CardWorld) -> None:
        """An executed refund whose answer was lost is found by its id, and a resend is a replay."""
        amount = card.arrange("ref_5", Fault.RESPONSE_LOST, eur(4200))

        with pytest.raises(OutcomeUnknown) as raised:
            card.rail.refund(a_refund("ref_5", amount))

        assert raised.value.key == "ref_5"
        assert card.rail.refund_status("ref_5").state is RefundState.PENDING
        assert card.rail.refund(a_refund("ref_5", amount)).replayed is True
        assert card.executions("ref_5") == 1

    def test_lost_before_processing_resolves_to_unknown_and_a_resend_executes_once(self, card: CardWorld) -> None:
        """A timeout before the acquirer processed anything shows as UNKNOWN, so the same id may be resent."""
        amount = card.arrange("ref_6", Fault.LOST_BEFORE_PROCESSING, eur(1234))

        with pytest.raises(OutcomeUnknown):
            card.rail.refund(a_refund("ref_6", amount))

        assert card.rail.refund_status("ref_6").state is RefundState.UNKNOWN
        assert card.rail.refund(a_refund("ref_6", amount)).replayed is False
        assert card.executions("ref_6") == 1

    def test_unavailable_once_is_retried_and_executes_once(self, card: CardWorld) -> None:
        """A 503 before processing is retried inside the adapter; the caller only sees the refund."""
        amount = card.arrange("ref_7", Fault.UNAVAILABLE, eur(1999), times=1)

        assert card.rail.refund(a_refund("ref_7", amount)).state is RefundState.PENDING
        assert card.executions("ref_7") == 1

    def test_unavailable_on_every_attempt_raises_after_bounded_attempts(self, card: CardWorld) -> None:
        """RailUnavailable reaches the caller only after ADAPTER_ATTEMPTS_MAX attempts, with nothing executed."""
        amount = card.arrange("ref_8", Fault.UNAVAILABLE, eur(1999), times=ADAPTER_ATTEMPTS_MAX)

        with pytest.raises(RailUnavailable):
            card.rail.refund(a_refund("ref_8", amount))

        assert card.rail.refund_status("ref_8").state is RefundState.UNKNOWN
        assert card.executions("ref_8") == 0

    def test_status_of_a_refund_never_sent_is_unknown(self, card: CardWorld) -> None:
        """UNKNOWN (not an error) is how the acquirer says it never received a refund id."""
        status = card.rail.refund_status("ref_never")

        assert (status.state, status.amount) == (RefundState.UNKNOWN, None)

    def test_chargeback_webhook_parses(self, card: CardWorld) -> None:
        """A chargeback arrives as chargeback.created with its amount, network reason and payment."""
        bodies = card.raise_chargeback("pi_order_9", Money(1234, "KWD"), "10.4")

        events = [e for body in bodies for e in card.rail.parse_webhook(body)]

        assert [(e.kind, e.payment_reference, e.amount, e.reason_code) for e in events] == [
            (CardEventKind.CHARGEBACK_CREATED, "pi_order_9", Money(1234, "KWD"), "10.4")
        ]
        assert events[0].object_id and events[0].event_id

    @pytest.mark.parametrize("amount", [Money(500, "JPY"), Money(1234, "KWD"), Money(1999, "EUR")], ids=str)
    def test_amounts_are_exact_end_to_end_in_every_exponent(self, card: CardWorld, amount: Money) -> None:
        """JPY, KWD and EUR keep their exact minor units through refund, webhook, status and report."""
        card.rail.refund(a_refund("ref_10", amount))

        events = [e for body in card.advance(CARD_SETTLE_DELAY_S) for e in card.rail.parse_webhook(body)]

        assert [e.amount for e in events] == [amount]
        assert card.rail.refund_status("ref_10").amount == amount
        assert card.rail.settlement_report(TODAY).total(SettlementItemKind.REFUND, amount.currency) == amount
        assert card.refunded(amount.currency) == amount

    def test_settlement_report_lists_refunds_and_chargebacks_of_the_day(self, card: CardWorld) -> None:
        """The report has each succeeded refund and each chargeback of the day, and nothing pending or failed."""
        card.rail.refund(a_refund("ref_11", eur(1999)))
        declined = card.arrange("ref_12", Fault.FAIL_AT_SETTLEMENT, eur(1000))
        card.rail.refund(a_refund("ref_12", declined))
        card.advance(CARD_SETTLE_DELAY_S)
        card.rail.refund(a_refund("ref_13", eur(3000)))  # still pending
        card.raise_chargeback("pi_order_2", eur(800), "13.1")

        report = card.rail.settlement_report(TODAY)

        assert report.on == TODAY
        assert sorted((i.kind, i.amount.amount_minor, i.payment_reference) for i in report.items) == [
            (SettlementItemKind.CHARGEBACK, 800, "pi_order_2"),
            (SettlementItemKind.REFUND, 1999, "pi_order_1"),
        ]
        assert [i.object_id for i in report.items if i.kind is SettlementItemKind.REFUND] == ["ref_11"]
        assert report.total(SettlementItemKind.CHARGEBACK, "EUR") == eur(800)

    @pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"id": 1}'])
    def test_unreadable_webhook_is_refused(self, card: CardWorld, body: bytes) -> None:
        """A body that is not a webhook of this rail raises RailMessageUnreadable."""
        with pytest.raises(RailMessageUnreadable):
            card.rail.parse_webhook(body)
