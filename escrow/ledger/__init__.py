"""The double-entry ledger: entries of balanced postings and materialized balances.

Sign convention: a positive posting credits an account (money arrives in it), a negative
one debits it (money leaves). Every entry sums to zero per currency, so the whole ledger
does too, and a trial balance's total debit balances equal its total credit balances.
"""

from escrow.ledger.chart import AccountRule, rule_for, validate_account
from escrow.ledger.entries import Entry, Posting, pieces, transfer
from escrow.ledger.store import Ledger, PostedEntry, TrialBalanceLine

__all__ = [
    "AccountRule",
    "Entry",
    "Ledger",
    "PostedEntry",
    "Posting",
    "TrialBalanceLine",
    "pieces",
    "rule_for",
    "transfer",
    "validate_account",
]
