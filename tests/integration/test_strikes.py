"""Strike points over HTTP on both databases: deductions, the yearly reset, automatic freezes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import assert_problem
from tests.integration.test_refund_first import Session, events_of


@pytest.fixture
def s(api: Api) -> Session:
    return Session(api)


def penalty(s: Session, points: int, seller: str = "s-1", role: str = "ip_staff") -> Any:
    body = {"points": points, "reason": "counterfeit listing", "finding_id": "fnd_1"}
    return s.call(role, "POST", f"/v1/sellers/{seller}/penalties", body)


def points(s: Session, seller: str = "s-1") -> dict[str, Any]:
    return dict(s.call("ip_staff", "GET", f"/v1/sellers/{seller}").json()["points"])


class TestStrikes:
    def test_a_penalty_deducts_points_and_counts_a_strike(self, s: Session) -> None:
        """Points go down by the penalty; the seller view shows points left and strikes this year."""
        response = penalty(s, 3)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["penalty"]["id"].startswith("pen_") and body["rule_triggered"] is None
        assert body["standing"] == {"year": 2026, "points_per_year": 12, "points_left": 9, "strikes": 1,
                                    "freeze_at_strikes": 4}  # fmt: skip
        assert points(s)["points_left"] == 9
        assert s.call("ip_staff", "GET", "/v1/sellers/s-1").json()["frozen"] is False
        assert events_of(s.api, "seller.penalized")[0]["points"] == 3

    def test_the_fourth_strike_freezes(self, s: Session) -> None:
        """At the freeze_at_strikes-th strike of the year the seller is frozen, naming the rule."""
        s.order(1)
        s.confirm("o-1")
        for _ in range(3):
            assert penalty(s, 1).json()["frozen_now"] is False
        fourth = penalty(s, 1).json()
        assert fourth["rule_triggered"] == "strike_limit" and fourth["frozen_now"] is True
        view = s.call("ip_staff", "GET", "/v1/sellers/s-1").json()
        assert view["frozen"] is True and "strike 4 of 4" in view["frozen_reason"]
        assert view["balances"][0]["frozen"] == 10_000 and view["balances"][0]["payable"] == 0
        assert [e["rule"] for e in events_of(s.api, "seller.frozen_by_rule")] == ["strike_limit"]
        with s.api.parts.engine.connect() as conn:
            query = text("SELECT action FROM audit_records WHERE object_id = 'seller:s-1' ORDER BY seq")
            actions = [r[0] for r in conn.execute(query).all()]
        assert actions == ["seller.penalized"] * 4 + ["seller.frozen", "seller.frozen_by_rule"]
        fifth = penalty(s, 1).json()  # already frozen: recorded, no second freeze
        assert fifth["rule_triggered"] == "strike_limit" and fifth["frozen_now"] is False

    def test_zero_points_freezes(self, s: Session) -> None:
        """Using up the year's points freezes at once, whatever the strike count."""
        penalty(s, 5)
        body = penalty(s, 9).json()
        assert body["standing"]["points_left"] == 0 and body["rule_triggered"] == "points_exhausted"
        assert s.call("ip_staff", "GET", "/v1/sellers/s-1").json()["frozen"] is True

    def test_points_reset_each_year(self, s: Session) -> None:
        """Strikes of last year do not count this year."""
        penalty(s, 10)
        penalty(s, 1)
        s.api.clock.advance(datetime(2027, 1, 1, tzinfo=UTC) - s.api.clock.now())
        assert points(s) == {"year": 2027, "points_per_year": 12, "points_left": 12, "strikes": 0,
                             "freeze_at_strikes": 4}  # fmt: skip
        assert penalty(s, 2).json()["standing"]["points_left"] == 10

    def test_bad_penalties_are_refused_and_write_nothing(self, s: Session) -> None:
        """Zero, negative, fractional points, missing finding, wrong role: 4xx, nothing written."""
        before = s.api.db.counts()
        for body in (
            {"points": 0, "reason": "x", "finding_id": "f"},
            {"points": -1, "reason": "x", "finding_id": "f"},
            {"points": 1.5, "reason": "x", "finding_id": "f"},
            {"points": "2", "reason": "x", "finding_id": "f"},
            {"points": 1, "reason": "x"},
            {"points": 1, "reason": "", "finding_id": "f"},
        ):
            assert_problem(s.call("ip_staff", "POST", "/v1/sellers/s-1/penalties", body), 422, "validation_failed")
        assert_problem(penalty(s, 1, role="cp_agent"), 403, "forbidden")
        assert s.api.db.counts() == before and s.api.db.count("seller_penalties") == 0
