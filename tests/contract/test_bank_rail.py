"""The BankRail contract, one behaviour per row, run against the fake and the ISO 20022 adapter.

behaviour                                              result
accepted transfer, clock moves                         ACCEPTED, then a BOOKED event, exact amount
same EndToEndId again, same content                    replayed, executed once
same EndToEndId, other content                         InstructionConflict, first one intact
invalid IBAN / BIC                                     REJECTED AC01 / RC01, nothing sent
closed account                                         REJECTED AC04 by the bank
executed, answer lost                                  OutcomeUnknown; status says ACCEPTED
lost before processing                                 OutcomeUnknown; status UNKNOWN; resend once
503 once                                               retried inside the adapter, executed once
503 on every attempt                                   RailUnavailable; status UNKNOWN
return                                                 RETURNED event and status, with reason
rejection at settlement                                REJECTED event (pain.002) and status
EUR / JPY / KWD                                        exact minor units everywhere
statement                                              booked debits and return credits, balances
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from adapters.fakes import Fault
from adapters.transport import ADAPTER_ATTEMPTS_MAX
from escrow.money import Money
from escrow.ports import (
    BankAccount,
    BankEventKind,
    CreditTransfer,
    EntryDirection,
    InstructionConflict,
    OutcomeUnknown,
    RailMessageUnreadable,
    RailUnavailable,
    TransferState,
)
from tests.contract.worlds import CREDITOR, DEBTOR, SETTLE_DELAY_S, TODAY, BankWorld


def transfer(e2e: str, amount: Money, creditor: BankAccount = CREDITOR, remittance: str = "payout") -> CreditTransfer:
    return CreditTransfer(end_to_end_id=e2e, amount=amount, creditor=creditor, remittance=remittance)


def eur(amount_minor: int) -> Money:
    return Money(amount_minor, "EUR")


class TestBankRailContract:
    def test_accepted_transfer_books_after_the_clock_moves(self, bank: BankWorld) -> None:
        """An accepted transfer is booked once the settle delay passes, and the notification says so exactly."""
        receipt = bank.rail.send_credit_transfer(transfer("pay-1", eur(1999)))
        assert (receipt.state, receipt.replayed, receipt.reason_code) == (TransferState.ACCEPTED, False, None)
        assert bank.advance(SETTLE_DELAY_S / 2) == []
        assert bank.rail.transfer_status("pay-1").state is TransferState.ACCEPTED

        bodies = bank.advance(SETTLE_DELAY_S)

        events = [e for body in bodies for e in bank.rail.parse_notification(body)]
        assert [(e.kind, e.end_to_end_id, e.amount, e.booked_on) for e in events] == [
            (BankEventKind.BOOKED, "pay-1", eur(1999), TODAY)
        ]
        status = bank.rail.transfer_status("pay-1")
        assert (status.state, status.amount) == (TransferState.BOOKED, eur(1999))
        assert bank.moved("EUR") == eur(1999)

    def test_replay_with_the_same_key_executes_once(self, bank: BankWorld) -> None:
        """Sending the same EndToEndId twice, before and after booking, moves the money once."""
        bank.rail.send_credit_transfer(transfer("pay-2", eur(2550)))
        again = bank.rail.send_credit_transfer(transfer("pay-2", eur(2550)))
        assert (again.state, again.replayed) == (TransferState.ACCEPTED, True)
        bank.advance(SETTLE_DELAY_S)

        after_booking = bank.rail.send_credit_transfer(transfer("pay-2", eur(2550)))

        assert (after_booking.state, after_booking.replayed) == (TransferState.BOOKED, True)
        assert bank.executions("pay-2") == 1
        assert bank.moved("EUR") == eur(2550)
        assert bank.advance(SETTLE_DELAY_S) == []  # no second booking notification

    def test_same_key_with_other_content_is_a_conflict(self, bank: BankWorld) -> None:
        """A reused EndToEndId with another amount is refused and leaves the first transfer as it was."""
        bank.rail.send_credit_transfer(transfer("pay-3", eur(1000)))

        with pytest.raises(InstructionConflict) as raised:
            bank.rail.send_credit_transfer(transfer("pay-3", eur(1001)))

        assert raised.value.key == "pay-3"
        assert bank.rail.transfer_status("pay-3").amount == eur(1000)
        assert bank.executions("pay-3") == 1

    @pytest.mark.parametrize(
        ("creditor", "reason"),
        [
            (BankAccount("DE00370400440532013000", "Bad Checksum"), "AC01"),
            (BankAccount("XX12345", "No Such Country"), "AC01"),
            (BankAccount(CREDITOR.iban, "Bad BIC", bic="NOTABIC!"), "RC01"),
        ],
    )
    def test_invalid_account_is_a_rejected_result_and_nothing_is_sent(
        self, bank: BankWorld, creditor: BankAccount, reason: str
    ) -> None:
        """An invalid IBAN or BIC is a REJECTED receipt, decided before anything reaches the bank."""
        receipt = bank.rail.send_credit_transfer(transfer("pay-4", eur(1999), creditor=creditor))

        assert (receipt.state, receipt.reason_code, receipt.accepted) == (TransferState.REJECTED, reason, False)
        assert bank.rail.transfer_status("pay-4").state is TransferState.UNKNOWN
        assert bank.executions("pay-4") == 0

    def test_closed_account_is_rejected_by_the_bank(self, bank: BankWorld) -> None:
        """The bank's own rejection (AC04) is a result, and the status keeps saying so."""
        receipt = bank.rail.send_credit_transfer(transfer("pay-5", eur(1999), creditor=bank.closed_account()))

        assert (receipt.state, receipt.reason_code) == (TransferState.REJECTED, "AC04")
        status = bank.rail.transfer_status("pay-5")
        assert (status.state, status.reason_code) == (TransferState.REJECTED, "AC04")
        assert bank.executions("pay-5") == 0

    def test_booked_but_response_lost_is_outcome_unknown_then_status_tells(self, bank: BankWorld) -> None:
        """When the answer is lost after execution, the caller learns the truth by key and a resend is a replay."""
        amount = bank.arrange("pay-6", Fault.RESPONSE_LOST, eur(4200))

        with pytest.raises(OutcomeUnknown) as raised:
            bank.rail.send_credit_transfer(transfer("pay-6", amount))

        assert raised.value.key == "pay-6"
        assert bank.rail.transfer_status("pay-6").state is TransferState.ACCEPTED
        assert bank.rail.send_credit_transfer(transfer("pay-6", amount)).replayed is True
        bank.advance(SETTLE_DELAY_S)
        assert bank.rail.transfer_status("pay-6").state is TransferState.BOOKED
        assert bank.executions("pay-6") == 1

    def test_lost_before_processing_resolves_to_unknown_and_a_resend_executes_once(self, bank: BankWorld) -> None:
        """A timeout before the bank processed anything shows as UNKNOWN, so the same key may be sent again."""
        amount = bank.arrange("pay-7", Fault.LOST_BEFORE_PROCESSING, eur(1234))

        with pytest.raises(OutcomeUnknown):
            bank.rail.send_credit_transfer(transfer("pay-7", amount))

        assert bank.rail.transfer_status("pay-7").state is TransferState.UNKNOWN
        resent = bank.rail.send_credit_transfer(transfer("pay-7", amount))
        assert (resent.state, resent.replayed) == (TransferState.ACCEPTED, False)
        assert bank.executions("pay-7") == 1

    def test_unavailable_once_is_retried_and_executes_once(self, bank: BankWorld) -> None:
        """A 503 before processing is retried inside the adapter; the caller only sees the success."""
        amount = bank.arrange("pay-8", Fault.UNAVAILABLE, eur(1999), times=1)

        receipt = bank.rail.send_credit_transfer(transfer("pay-8", amount))

        assert receipt.state is TransferState.ACCEPTED
        assert bank.executions("pay-8") == 1

    def test_unavailable_on_every_attempt_raises_after_bounded_attempts(self, bank: BankWorld) -> None:
        """RailUnavailable reaches the caller only after ADAPTER_ATTEMPTS_MAX attempts, with nothing executed."""
        amount = bank.arrange("pay-9", Fault.UNAVAILABLE, eur(1999), times=ADAPTER_ATTEMPTS_MAX)

        with pytest.raises(RailUnavailable):
            bank.rail.send_credit_transfer(transfer("pay-9", amount))

        assert bank.rail.transfer_status("pay-9").state is TransferState.UNKNOWN
        assert bank.executions("pay-9") == 0
        assert bank.rail.send_credit_transfer(transfer("pay-9", amount)).state is TransferState.ACCEPTED

    def test_status_of_an_id_never_sent_is_unknown(self, bank: BankWorld) -> None:
        """UNKNOWN (not an error) is how the bank says it never received an EndToEndId."""
        status = bank.rail.transfer_status("never-sent")

        assert (status.state, status.amount) == (TransferState.UNKNOWN, None)

    def test_return_parses_with_its_reason(self, bank: BankWorld) -> None:
        """A returned transfer comes back as a RETURNED event with the reason code and the exact amount."""
        bank.rail.send_credit_transfer(transfer("pay-10", eur(7500)))
        bank.advance(SETTLE_DELAY_S)

        bodies = bank.return_transfer("pay-10", "AC06")

        events = [e for body in bodies for e in bank.rail.parse_notification(body)]
        assert [(e.kind, e.end_to_end_id, e.amount, e.reason_code) for e in events] == [
            (BankEventKind.RETURNED, "pay-10", eur(7500), "AC06")
        ]
        status = bank.rail.transfer_status("pay-10")
        assert (status.state, status.reason_code) == (TransferState.RETURNED, "AC06")
        assert bank.moved("EUR") == eur(0)

    def test_rejection_at_settlement_parses_as_rejected(self, bank: BankWorld) -> None:
        """A transfer accepted then rejected when it would settle is reported as REJECTED (AM04), not booked."""
        amount = bank.arrange("pay-11", Fault.FAIL_AT_SETTLEMENT, eur(1900))
        assert bank.rail.send_credit_transfer(transfer("pay-11", amount)).state is TransferState.ACCEPTED

        bodies = bank.advance(SETTLE_DELAY_S)

        events = [e for body in bodies for e in bank.rail.parse_notification(body)]
        assert [(e.kind, e.end_to_end_id, e.amount, e.reason_code) for e in events] == [
            (BankEventKind.REJECTED, "pay-11", amount, "AM04")
        ]
        assert bank.rail.transfer_status("pay-11").state is TransferState.REJECTED
        assert bank.moved("EUR") == eur(0)

    @pytest.mark.parametrize(
        "amount",
        [Money(500, "JPY"), Money(1234, "KWD"), Money(1, "KWD"), Money(1999, "EUR"), Money(10**15, "JPY")],
        ids=str,
    )
    def test_amounts_are_exact_end_to_end_in_every_exponent(self, bank: BankWorld, amount: Money) -> None:
        """JPY (0 decimals), KWD (3) and EUR (2) stay exact through send, notification, status and statement."""
        bank.rail.send_credit_transfer(transfer("pay-12", amount))

        events = [e for body in bank.advance(SETTLE_DELAY_S) for e in bank.rail.parse_notification(body)]

        assert [e.amount for e in events] == [amount]
        assert bank.rail.transfer_status("pay-12").amount == amount
        (account,) = bank.rail.statement(TODAY).accounts
        assert [e.amount for e in account.entries] == [amount]
        assert account.closing_balance == -amount
        assert bank.moved(amount.currency) == amount

    def test_statement_lists_booked_transfers_and_returns_exactly(self, bank: BankWorld) -> None:
        """The day's statement has a debit per booked transfer and a credit per return, and balances that add up."""
        bank.rail.send_credit_transfer(transfer("pay-13", eur(1999)))
        bank.rail.send_credit_transfer(transfer("pay-14", eur(2550)))
        bank.rail.send_credit_transfer(transfer("pay-15", Money(500, "JPY")))
        bank.advance(SETTLE_DELAY_S)
        bank.return_transfer("pay-14", "AC04")

        statement = bank.rail.statement(TODAY)

        by_currency = {a.currency: a for a in statement.accounts}
        assert set(by_currency) == {"EUR", "JPY"}
        euros = by_currency["EUR"]
        assert euros.account_iban == DEBTOR.iban
        assert [(e.end_to_end_id, e.direction, e.amount, e.return_reason) for e in euros.entries] == [
            ("pay-13", EntryDirection.DEBIT, eur(1999), None),
            ("pay-14", EntryDirection.DEBIT, eur(2550), None),
            ("pay-14", EntryDirection.CREDIT, eur(2550), "AC04"),
        ]
        assert (euros.opening_balance, euros.closing_balance) == (eur(0), eur(-1999))
        assert len({e.entry_reference for e in statement.entries}) == len(statement.entries)
        next_day = {a.currency: a for a in bank.rail.statement(TODAY + timedelta(days=1)).accounts}
        assert (next_day["EUR"].opening_balance, next_day["EUR"].entries) == (eur(-1999), ())

    def test_an_uploaded_statement_reads_like_the_fetched_one(self, bank: BankWorld) -> None:
        """parse_statement on the rail's statement document gives the same accounts as statement()."""
        bank.rail.send_credit_transfer(transfer("pay-16", Money(1234, "KWD")))
        bank.advance(SETTLE_DELAY_S)

        parsed = bank.rail.parse_statement(bank.statement_document(TODAY))

        assert parsed.accounts == bank.rail.statement(TODAY).accounts

    @pytest.mark.parametrize("body", [b"", b"not a message", b"{}", b"<Document/>"])
    def test_unreadable_notification_is_refused(self, bank: BankWorld, body: bytes) -> None:
        """A body that is not a notification of this rail raises RailMessageUnreadable, never a half result."""
        with pytest.raises(RailMessageUnreadable):
            bank.rail.parse_notification(body)
