"""The waterfall (DESIGN §2): who is paid first from a seller's money, decided from values alone.

Recovery of advance refunds takes the seller's money source by source in the order the
jurisdiction names (`recovery_order`: the refunded order's own held funds, then other
frozen proceeds, then payable proceeds, then the deposit), each source only up to what it
holds and the whole only up to what is outstanding. Several receivables of one seller are
paid oldest first. Money confiscated from a deposit pays outstanding receivables first and
the rest replenishes the guarantee fund. Awarded claims share what is left pro rata by
awarded amount, or first-awarded-first-paid, per jurisdiction.

Everything here is integer minor units of one currency; nothing does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from escrow.errors import InvalidInput
from escrow.money import allocate

WaterfallMode = Literal["pro_rata", "first_awarded"]


@dataclass(frozen=True, slots=True)
class Take:
    """`amount` minor units taken from `source`."""

    source: str
    amount: int


def plan_recovery(outstanding: int, available: Sequence[tuple[str, int]]) -> list[Take]:
    """What to take from each source, in the given order, to pay off `outstanding`.

    `available` lists (source, amount it can give) in waterfall order; negative amounts
    count as zero. The takes sum to min(outstanding, total available) and never exceed a
    source's amount. Raises InvalidInput for a negative outstanding amount.
    """
    if outstanding < 0:
        raise InvalidInput("outstanding amount must not be negative")
    takes: list[Take] = []
    left = outstanding
    for source, amount in available:
        if left == 0:
            break
        take = min(left, max(amount, 0))
        if take > 0:
            takes.append(Take(source, take))
            left -= take
    return takes


def pay_oldest_first(total: int, outstanding: Sequence[int]) -> list[int]:
    """Split `total` over receivables (oldest first): each is paid in full before the next.

    Returns one amount per receivable; their sum is min(total, sum(outstanding)).
    """
    if total < 0 or any(o < 0 for o in outstanding):
        raise InvalidInput("amounts must not be negative")
    parts: list[int] = []
    left = total
    for owed in outstanding:
        part = min(left, owed)
        parts.append(part)
        left -= part
    return parts


@dataclass(frozen=True, slots=True)
class ConfiscationSplit:
    """Where confiscated deposit money goes: receivables (oldest first), then the guarantee fund."""

    to_receivables: tuple[int, ...]
    to_guarantee_fund: int


def split_confiscation(amount: int, outstanding: Sequence[int]) -> ConfiscationSplit:
    """Confiscated `amount` pays what the seller owes first; the remainder goes to the guarantee fund."""
    parts = pay_oldest_first(amount, outstanding)
    return ConfiscationSplit(tuple(parts), amount - sum(parts))


def allocate_claims(total: int, awarded: Sequence[int], mode: WaterfallMode) -> list[int]:
    """Share `total` among claims awarded against the same funds (in award order).

    `pro_rata`: by awarded amount, largest remainder (escrow.money.allocate), never more
    than a claim's award; `first_awarded`: each claim in full before the next.
    """
    if total < 0 or any(a < 0 for a in awarded):
        raise InvalidInput("amounts must not be negative")
    if mode == "first_awarded" or not awarded:
        return pay_oldest_first(total, awarded)
    available = min(total, sum(awarded))
    if available == 0:
        return [0] * len(awarded)
    return allocate(available, list(awarded))
