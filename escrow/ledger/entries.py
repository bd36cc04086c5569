"""Journal entries as values, checked before anything reaches the database."""

from __future__ import annotations

from dataclasses import dataclass, field

from escrow.errors import InvalidInput, UnbalancedEntry
from escrow.ledger.chart import validate_account
from escrow.limits import AMOUNT_MINOR_MAX, POSTINGS_PER_ENTRY_MAX
from escrow.money import Money

ENTRY_KIND_CHARS_MAX = 64


@dataclass(frozen=True, slots=True)
class Posting:
    """One leg: `amount` credits `account` when positive, debits it when negative."""

    account: str
    amount: Money


@dataclass(frozen=True, slots=True)
class Entry:
    """A balanced set of postings, validated on construction.

    Raises UnbalancedEntry when the postings of any currency do not sum to zero, and
    InvalidInput for empty, oversized or zero-amount entries.
    """

    kind: str
    postings: tuple[Posting, ...]
    memo: str | None = None
    reverses: str | None = None
    net: dict[tuple[str, str], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        postings = self.postings
        if not 2 <= len(postings) <= POSTINGS_PER_ENTRY_MAX:
            raise InvalidInput(f"an entry has 2 to {POSTINGS_PER_ENTRY_MAX} postings")
        # Plain dicts and locals: every order, hold and release builds entries.
        per_currency: dict[str, int] = {}
        net: dict[tuple[str, str], int] = {}
        for posting in postings:
            account = validate_account(posting.account)
            amount = posting.amount
            minor, currency = amount.amount_minor, amount.currency
            if minor == 0:
                raise InvalidInput("a posting moves a non-zero amount")
            per_currency[currency] = per_currency.get(currency, 0) + minor
            key = (account, currency)
            net[key] = net.get(key, 0) + minor
        unbalanced = {c: s for c, s in per_currency.items() if s != 0}
        if unbalanced:
            raise UnbalancedEntry(
                "postings must sum to zero per currency; off by "
                + ", ".join(f"{s} {c}" for c, s in sorted(unbalanced.items()))
            )
        # Postings on one account cancel out before they touch its balance row.
        object.__setattr__(self, "net", {k: v for k, v in net.items() if v != 0})

    def reversal(self, original_id: str, memo: str | None = None) -> Entry:
        """The entry that undoes this one; it points at `original_id`."""
        return Entry(
            kind=f"reversal:{self.kind}"[:ENTRY_KIND_CHARS_MAX],
            postings=tuple(Posting(p.account, -p.amount) for p in self.postings),
            memo=memo or f"reverses {original_id}",
            reverses=original_id,
        )


def pieces(total: int) -> list[int]:
    """`total` minor units as amounts of at most AMOUNT_MINOR_MAX each, largest first.

    One amount, and so one posting (a database CHECK), is at most 10^15 minor units
    (DESIGN §2), but a balance is the sum of many and may exceed it: whatever moves a
    whole balance moves it in pieces. A balance is a BIGINT, so there are at most 9,224.
    """
    if total <= 0:
        raise InvalidInput("only a positive amount is split into pieces")
    full, rest = divmod(total, AMOUNT_MINOR_MAX)
    return [AMOUNT_MINOR_MAX] * full + ([rest] if rest else [])


def transfer(kind: str, source: str, destination: str, amount: Money, memo: str | None = None) -> Entry:
    """The common two-leg entry: `amount` leaves `source` and arrives in `destination`.

    Built directly rather than through `Entry`'s general checks: two opposite legs of one
    positive amount balance by construction, so only the names need checking, and this
    runs for every order, hold and release. A transfer from an account to itself moves
    nothing and is refused.
    """
    if amount.amount_minor <= 0:
        raise InvalidInput("a transfer moves a positive amount")
    _check_kind(kind)
    validate_account(source)
    if validate_account(destination) == source:
        raise InvalidInput(f"a transfer needs two different accounts, got {source!r} twice")
    entry = _new(Entry)
    _set(entry, "kind", kind)
    _set(entry, "postings", (Posting(source, -amount), Posting(destination, amount)))
    _set(entry, "memo", memo)
    _set(entry, "reverses", None)
    currency, minor = amount.currency, amount.amount_minor
    _set(entry, "net", {(source, currency): -minor, (destination, currency): minor})
    return entry


_new = object.__new__
_set = object.__setattr__  # a frozen dataclass's fields are written this way, as its own __init__ does


def _check_kind(kind: str) -> None:
    if not kind or len(kind) > ENTRY_KIND_CHARS_MAX:
        raise InvalidInput("entry kind must be 1-64 characters")
