"""A bank reached over HTTP with ISO 20022 messages: pain.001 out; pain.002, camt.054, camt.053 in."""

from adapters.bank.iso20022.client import Iso20022BankRail

__all__ = ["Iso20022BankRail"]
