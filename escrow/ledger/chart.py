"""The chart of accounts: which accounts may go negative, and which are sharded.

Names follow DESIGN §2 (`order:{id}:escrow`, `seller:{id}:payable`, `clearing:card`, …).
Two kinds of account are *unguarded*:

- platform-wide pass-through accounts (`clearing:*`, `in_transit:*`) mirror money outside
  the ledger and carry the opposite sign of what they fed in; every order touches them, so
  they are split into HOT_ACCOUNT_SHARDS balance rows to keep concurrent orders from
  queueing on one row lock;
- receivables (`seller:{id}:owed`), which are negative by nature while the seller owes.

Everything else is a liability of the platform to someone and must never go negative; those
keep one balance row, so the guard is a single conditional UPDATE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from escrow.errors import InvalidInput
from escrow.limits import HOT_ACCOUNT_SHARDS

ACCOUNT_CHARS_MAX = 200
_ACCOUNT_RE = re.compile(r"^[a-z_]+(?::[A-Za-z0-9_.\-]{1,120})*$")
_SHARDED_PREFIXES = ("clearing:", "in_transit:", "external:")
_RECEIVABLE_SUFFIXES = (":owed",)


@dataclass(frozen=True, slots=True)
class AccountRule:
    non_negative: bool
    shards: int


GUARDED = AccountRule(non_negative=True, shards=1)
RECEIVABLE = AccountRule(non_negative=False, shards=1)
PASS_THROUGH = AccountRule(non_negative=False, shards=HOT_ACCOUNT_SHARDS)


def validate_account(name: str) -> str:
    if not isinstance(name, str) or len(name) > ACCOUNT_CHARS_MAX or not _ACCOUNT_RE.match(name):
        raise InvalidInput(f"invalid account name {name!r}")
    return name


def rule_for(name: str) -> AccountRule:
    if name.startswith(_SHARDED_PREFIXES):
        return PASS_THROUGH
    if name.endswith(_RECEIVABLE_SUFFIXES):
        return RECEIVABLE
    return GUARDED


# Account names of the flows (DESIGN §2), in one place so every module spells them alike.
IN_TRANSIT_REFUNDS = "in_transit:refunds"
IN_TRANSIT_PAYOUTS = "in_transit:payouts"
GUARANTEE_FUND = "platform:guarantee_fund"


def clearing(payment_method: str) -> str:
    return "clearing:card" if payment_method == "card" else "clearing:bank"


def order_escrow(order_id: str) -> str:
    return f"order:{order_id}:escrow"


def order_held(order_id: str) -> str:
    return f"order:{order_id}:held"


def seller_account(seller_id: str, kind: str) -> str:
    """`seller:{id}:payable|frozen|deposit|owed`."""
    return f"seller:{seller_id}:{kind}"
