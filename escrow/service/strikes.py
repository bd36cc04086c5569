"""Strike points (DESIGN §3 Seller): a points deduction like a driving licence.

Each penalty is a strike and deducts points from the seller's allowance for the calendar
year (UTC), which starts again at `strikes.points_per_year` every 1 January. At zero points
left, or at the `strikes.freeze_at_strikes`-th strike of the year, the seller is frozen
automatically (escrow.service.sellers.freeze_seller), with an audit record naming the rule.

The policy is that of the jurisdiction of the seller's most recent order (the default
jurisdiction for a seller without orders). The seller row is locked exclusively first, so
concurrent penalties count each other's strikes and freeze at most once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from escrow import audit, events
from escrow.audit import Actor
from escrow.ids import new_id
from escrow.persistence.tables import orders, seller_penalties
from escrow.service.recovery import lock_seller_exclusive
from escrow.service.sellers import freeze_seller
from escrow.settings import JurisdictionPolicy, Policies


def _policy(conn: Connection, seller_id: str, policies: Policies) -> JurisdictionPolicy:
    jurisdiction = conn.execute(
        select(orders.c.jurisdiction)
        .where(orders.c.seller_id == seller_id)
        .order_by(orders.c.created_at.desc(), orders.c.order_id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return policies.for_jurisdiction(jurisdiction)


def standing(conn: Connection, seller_id: str, now: datetime, policies: Policies) -> dict[str, Any]:
    """Points left and strikes in the current year, with the rule they are measured against."""
    rules = _policy(conn, seller_id, policies).strikes
    year = now.year
    strikes, used = conn.execute(
        select(func.count(seller_penalties.c.id), func.coalesce(func.sum(seller_penalties.c.points), 0)).where(
            seller_penalties.c.seller_id == seller_id, seller_penalties.c.year == year
        )
    ).one()
    return {
        "year": year,
        "points_per_year": rules.points_per_year,
        "points_left": max(rules.points_per_year - int(used), 0),
        "strikes": int(strikes),
        "freeze_at_strikes": rules.freeze_at_strikes,
    }


def penalize(
    conn: Connection,
    actor: Actor,
    now: datetime,
    policies: Policies,
    *,
    seller_id: str,
    points: int,
    reason: str,
    finding_id: str,
) -> dict[str, Any]:
    """Record a strike of `points`; freeze the seller if a rule says so and it is not frozen yet."""
    seller = lock_seller_exclusive(conn, seller_id, now)
    penalty_id = new_id("pen")
    conn.execute(
        seller_penalties.insert(),
        {
            "id": penalty_id, "seller_id": seller_id, "year": now.year, "points": points, "reason": reason,
            "finding_id": finding_id, "actor": actor.principal_id, "created_at": now,
        },
    )  # fmt: skip
    after = standing(conn, seller_id, now, policies)
    data = {"penalty_id": penalty_id, "seller_id": seller_id, "points": points, "finding_id": finding_id, **after}
    audit.record(conn, actor, "seller.penalized", f"seller:{seller_id}", now=now, reason=reason, data=data)
    events.emit(conn, "seller.penalized", {**data, "reason": reason}, now=now)
    rule = None
    if after["points_left"] == 0:
        rule = "points_exhausted"
    elif after["strikes"] >= after["freeze_at_strikes"]:
        rule = "strike_limit"
    frozen_now = False
    if rule is not None and not seller.frozen:
        why = (
            f"automatic freeze: no strike points left in {after['year']} (of {after['points_per_year']})"
            if rule == "points_exhausted"
            else f"automatic freeze: strike {after['strikes']} of {after['freeze_at_strikes']} in {after['year']}"
        )
        freeze_seller(conn, actor, now, seller_id, why)
        rule_data = {"seller_id": seller_id, "rule": rule, "penalty_id": penalty_id, **after}
        audit.record(conn, actor, "seller.frozen_by_rule", f"seller:{seller_id}", now=now, reason=why, data=rule_data)
        events.emit(conn, "seller.frozen_by_rule", rule_data, now=now)
        frozen_now = True
    return {
        "penalty": {"id": penalty_id, "points": points, "reason": reason, "finding_id": finding_id, "created_at": now},
        "standing": after,
        "rule_triggered": rule,
        "frozen_now": frozen_now,
    }
