"""IBAN and BIC checks shared by every bank adapter and the fake, so they reject alike."""

from __future__ import annotations

from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException

from escrow.ports import BankAccount

INVALID_CREDITOR_IBAN = "AC01"  # ISO 20022 ExternalStatusReason1Code: IncorrectAccountNumber
INVALID_BIC = "RC01"  # BankIdentifierIncorrect


def account_rejection(account: BankAccount) -> tuple[str, str] | None:
    """(ISO reason code, text) when the IBAN (checksum, length, country) or BIC is invalid."""
    try:
        IBAN(account.iban)
    except SchwiftyException as exc:
        return INVALID_CREDITOR_IBAN, f"invalid IBAN: {type(exc).__name__}"
    if account.bic:
        try:
            BIC(account.bic)
        except SchwiftyException as exc:
            return INVALID_BIC, f"invalid BIC: {type(exc).__name__}"
    return None


def normalised(account: BankAccount) -> BankAccount:
    """The account with IBAN and BIC compact and upper-case; call after `account_rejection`."""
    return BankAccount(
        iban=IBAN(account.iban).compact,
        name=account.name,
        bic=BIC(account.bic).compact if account.bic else None,
    )
