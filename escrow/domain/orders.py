"""Order status and hold deadlines, decided from values alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from escrow.errors import BeyondHoldMaximum
from escrow.settings import JurisdictionPolicy


@dataclass(frozen=True, slots=True)
class Parts:
    """Where an order's money is; the five always sum to the amount paid."""

    escrowed: int
    held: int
    frozen: int
    released: int
    refunded: int

    def total(self) -> int:
        return self.escrowed + self.held + self.frozen + self.released + self.refunded


def order_status(parts: Parts, *, amount: int, confirmed: bool) -> str:
    """`escrowed` → `held` → `confirmed` → `closed`, or `refunded`.

    After confirmation an order is `confirmed` while any of its money is still frozen
    (tied to a hold or to a seller freeze) and `closed` once none is. Before confirmation
    it is `refunded` when all of it went back to the buyer, `held` while a hold ties any
    of it, else `escrowed`.
    """
    if confirmed:
        return "confirmed" if parts.frozen > 0 else "closed"
    if parts.refunded == amount:
        return "refunded"
    return "held" if parts.held > 0 else "escrowed"


def default_hold_deadline(now: datetime, policy: JurisdictionPolicy, *, review: bool) -> datetime:
    days = policy.review_hold_days if review else policy.hold_max_days
    return now + timedelta(days=days)


def check_hold_deadline(requested: datetime, *, now: datetime, policy: JurisdictionPolicy) -> datetime:
    """A new hold's deadline must lie in the future and within the jurisdiction's maximum."""
    latest = now + timedelta(days=policy.hold_max_days)
    if requested <= now:
        raise BeyondHoldMaximum("expires_at must be in the future", field="expires_at")
    if requested > latest:
        raise BeyondHoldMaximum(
            f"expires_at is beyond the {policy.hold_max_days}-day maximum (latest {latest.isoformat()}); "
            "IP staff may extend a hold later within policy",
            field="expires_at",
        )
    return requested


def hold_cap(created_at: datetime, policy: JurisdictionPolicy) -> datetime:
    """The latest a hold may ever run to, all extensions included."""
    return created_at + timedelta(days=policy.hold_max_days + policy.hold_extension_days_max)


def check_extension(requested: datetime, *, current: datetime, cap: datetime, now: datetime) -> datetime:
    if requested <= max(current, now):
        raise BeyondHoldMaximum("an extension must move expires_at later than it is now", field="expires_at")
    if requested > cap:
        raise BeyondHoldMaximum(
            f"expires_at is beyond the jurisdiction's cap on extensions ({cap.isoformat()})", field="expires_at"
        )
    return requested
