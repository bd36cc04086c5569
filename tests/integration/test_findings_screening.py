"""Screening against live findings: the policy, the dry run, refreshes, and a second API process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from escrow import bootstrap
from escrow.api.app import create_app
from escrow.persistence.db import make_engine
from escrow.ports import ManualClock
from escrow.screening import FindingRule, Matcher
from escrow.screening.registry import ActiveFinding, MatcherRegistry
from escrow.service.findings import DatabaseFindingSource, FindingsScreener
from escrow.settings import load_settings
from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import assert_problem
from tests.unit.screening.test_registry import GatedBuilder, MemorySource

GUCCI = {"kind": "keyword", "brand": "Gucci", "patterns": ["gucci"]}
TITLE = "Vintage G.u.c.c.i bag 1:1"


def create(api: Api, headers: dict[str, str], **body: Any) -> str:
    response = api.client.post("/v1/findings", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def screen(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/screen", json={"title": TITLE, **body}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def refresh(api: Api) -> bool:
    screener = api.parts.screener
    assert isinstance(screener, FindingsScreener)
    return screener.refresh_now()


class TestScreenEndpoint:
    def test_decision_follows_the_finding_through_its_lifecycle(self, api: Api) -> None:
        """Suspected reviews, confirmed holds, dismissed passes, each after a refresh; screening writes nothing."""
        staff = api.key("ip_staff")
        assert screen(api.client, staff) == {"decision": "pass", "matches": []}
        finding = create(api, staff, **GUCCI)
        assert refresh(api) is True
        assert refresh(api) is False  # nothing changed since
        before = api.db.counts() | {"events": api.db.count("events")}
        result = screen(api.client, staff)
        assert result == {
            "decision": "review",
            "matches": [
                {
                    "finding_id": finding,
                    "kind": "keyword",
                    "brand": "Gucci",
                    "pattern": "gucci",
                    "matched": "G.u.c.c.i",
                    "start": 8,
                    "end": 17,
                }
            ],
        }
        assert TITLE[8:17] == "G.u.c.c.i"
        assert api.db.counts() | {"events": api.db.count("events")} == before
        api.client.post(f"/v1/findings/{finding}/confirm", json={"reason": "test buy"}, headers=staff)
        refresh(api)
        assert screen(api.client, staff)["decision"] == "hold"
        api.client.post(f"/v1/findings/{finding}/dismiss", json={"reason": "licensed"}, headers=staff)
        refresh(api)
        assert screen(api.client, staff) == {"decision": "pass", "matches": []}

    def test_seller_and_listing_findings_match_exactly(self, api: Api) -> None:
        """Seller and listing findings match their ids only, with start == end == 0."""
        staff = api.key("ip_staff")
        seller = create(api, staff, kind="seller", brand="Rolex", seller_ids=["s-9"], status="confirmed")
        listing = create(api, staff, kind="listing", brand="Rolex", listing_ids=["l-1"])
        refresh(api)
        plain = {"title": "a plain watch"}
        assert screen(api.client, staff, **plain, seller_id="s-9", listing_id="l-2")["matches"] == [
            {"finding_id": seller, "kind": "seller", "brand": "Rolex", "pattern": "s-9", "matched": "s-9",
             "start": 0, "end": 0},
        ]  # fmt: skip
        result = screen(api.client, staff, **plain, seller_id="s-99", listing_id="l-1")
        assert result["decision"] == "review" and [m["finding_id"] for m in result["matches"]] == [listing]
        assert screen(api.client, staff, **plain, seller_id="S-9")["decision"] == "pass"

    def test_an_expired_finding_stops_matching_at_once(self, api: Api) -> None:
        """Once expires_at passes, the finding no longer matches, even before the matcher is rebuilt."""
        staff = api.key("ip_staff")
        create(api, staff, **GUCCI, status="confirmed", expires_at="2026-11-29T12:10:00Z")
        refresh(api)
        assert screen(api.client, staff)["decision"] == "hold"
        api.clock.advance(timedelta(minutes=10))
        assert screen(api.client, staff) == {"decision": "pass", "matches": []}
        assert refresh(api) is True  # the earliest expiry passed: rebuilt without it
        assert screen(api.client, staff)["decision"] == "pass"

    def test_only_ip_staff_screen_and_input_is_bounded(self, api: Api) -> None:
        """The dry run is for IP staff; an over-long title or unknown field is 422."""
        for role in ("checkout", "finance"):
            assert_problem(api.client.post("/v1/screen", json={"title": "x"}, headers=api.key(role)), 403, "forbidden")
        staff = api.key("ip_staff")
        assert_problem(
            api.client.post("/v1/screen", json={"title": "x" * 1001}, headers=staff), 422, "validation_failed"
        )
        assert_problem(
            api.client.post("/v1/screen", json={"title": "x", "buyer_id": "b"}, headers=staff), 422, "validation_failed"
        )

    def test_screening_does_no_io_inside_an_open_write_transaction(self, api: Api) -> None:
        """Order intake screens inside its transaction: screening then reads no database (on SQLite it would wait)."""
        staff = api.key("ip_staff")
        create(api, staff, **GUCCI, status="confirmed")
        refresh(api)
        with api.parts.engine.begin() as conn:
            conn.execute(text("UPDATE finding_revision SET revision = revision + 1"))  # holds the write lock
            started = time.monotonic()
            result = api.parts.screener.screen(TITLE, None, None)
            assert time.monotonic() - started < 1.0
        assert result.decision == "hold"


class TestSecondProcess:
    def test_a_second_api_instance_sees_changes_within_one_second(self, api: Api) -> None:
        """Another API process on the same database picks up create, confirm and dismiss by its own loop in < 1 s."""
        settings = load_settings(database_url=api.db.url, audit_seal_interval_ms=0, api_key_cache_ttl_ms=0)
        other = bootstrap.components(settings, clock=api.clock)
        staff = api.key("ip_staff")
        try:
            with TestClient(create_app(other), raise_server_exceptions=False) as client:  # runs the loops

                def seen_within(decision: str, bound_s: float = 2.0) -> float:
                    started = time.monotonic()
                    while time.monotonic() - started < bound_s:
                        if screen(client, staff)["decision"] == decision:
                            return time.monotonic() - started
                        time.sleep(0.02)
                    raise AssertionError(f"second instance did not reach {decision!r} within {bound_s} s")

                assert seen_within("pass") < 1.0  # its first build happened at start-up
                finding = create(api, staff, **GUCCI)
                assert seen_within("review") < 1.0
                api.client.post(f"/v1/findings/{finding}/confirm", json={"reason": "r"}, headers=staff)
                assert seen_within("hold") < 1.0
                api.client.post(f"/v1/findings/{finding}/dismiss", json={"reason": "r"}, headers=staff)
                assert seen_within("pass") < 1.0
        finally:
            other.engine.dispose()

    def test_changes_reach_a_second_instance_in_under_a_second_while_its_base_rebuild_is_slow(self, api: Api) -> None:
        """A second instance (own engine, registry and loop) whose base rebuild is stuck still sees
        create, confirm and dismiss within 1 s through its overlay, and keeps them once the rebuild lands."""
        engine = make_engine(api.db.url, pool_size=2)
        builder = GatedBuilder()
        registry = MatcherRegistry(
            DatabaseFindingSource(engine), api.clock.now, builder=builder, interval_s=0.05, overlay_findings_max=0
        )
        other = FindingsScreener(registry, api.clock)
        staff = api.key("ip_staff")
        create(api, staff, kind="keyword", brand="Rolex", patterns=["rolex"], status="confirmed")
        create(api, staff, kind="keyword", brand="Hermes", patterns=["hermes"], status="confirmed")
        create(api, staff, kind="keyword", brand="Prada", patterns=["prada"], status="confirmed")
        assert registry.warm()
        builder.slow = True
        stop = threading.Event()
        loop = threading.Thread(target=registry.run, args=(stop,))
        loop.start()

        def seen_within(decision: str) -> float:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < 2.0:
                if other.screen(TITLE, None, None).decision == decision:
                    return elapsed
                time.sleep(0.02)
            raise AssertionError(f"second instance did not reach {decision!r} within 2 s")

        try:
            assert seen_within("pass") < 1.0
            finding = create(api, staff, **GUCCI)
            assert seen_within("review") < 1.0
            assert builder.entered.wait(5) and registry.rebuilding  # the overlay's bound started a base rebuild
            api.client.post(f"/v1/findings/{finding}/confirm", json={"reason": "r"}, headers=staff)
            assert seen_within("hold") < 1.0
            api.client.post(f"/v1/findings/{finding}/dismiss", json={"reason": "r"}, headers=staff)
            assert seen_within("pass") < 1.0
            second = create(api, staff, **GUCCI, status="confirmed")
            assert seen_within("hold") < 1.0
            assert registry.rebuilding  # all of it while the base rebuild was still stuck
        finally:
            builder.release.set()
            assert registry.wait_for_rebuild(5)
            stop.set()
            loop.join(5)
            engine.dispose()
        assert [m["finding_id"] for m in other.screen(TITLE, None, None).matches] == [second]


def fake_source(findings: list[ActiveFinding]) -> MemorySource:
    """An in-memory source holding `findings` (see tests.unit.screening.test_registry)."""
    source = MemorySource(ManualClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC)))
    source.replace(findings)
    return source


def keyword(finding_id: str, status: str, *patterns: str) -> ActiveFinding:
    return ActiveFinding(FindingRule(finding_id, "keyword", finding_id.upper(), status, patterns=patterns))


class TestScreenerPolicy:
    def screener(self, *findings: ActiveFinding) -> FindingsScreener:
        clock = ManualClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
        return FindingsScreener(MatcherRegistry(fake_source(list(findings)), clock.now), clock)

    def test_a_confirmed_match_holds_and_names_both_kinds_of_finding(self) -> None:
        """Any confirmed match decides `hold`; confirmed and suspected ids are listed apart."""
        screener = self.screener(
            keyword("fnd_c", "confirmed", "rolex"),
            keyword("fnd_s", "suspected", "replica"),
            keyword("fnd_x", "confirmed", "prada"),
        )
        result = screener.screen("Rolex replica watch", None, None)
        assert result.decision == "hold"
        assert result.hold_finding_ids == ("fnd_c",)
        assert result.review_finding_ids == ("fnd_s",)
        assert [(m["finding_id"], m["matched"]) for m in result.matches] == [("fnd_c", "Rolex"), ("fnd_s", "replica")]

    def test_only_suspected_matches_review(self) -> None:
        """Without a confirmed match, a suspected match decides `review`."""
        result = self.screener(keyword("fnd_s", "suspected", "replica"), keyword("fnd_c", "confirmed", "prada")).screen(
            "replica watch, replica box", None, None
        )
        assert result.decision == "review"
        assert result.review_finding_ids == ("fnd_s",) and result.hold_finding_ids == ()
        assert len(result.matches) == 2

    def test_no_match_passes(self) -> None:
        """A title matching nothing passes with no matches."""
        result = self.screener(keyword("fnd_c", "confirmed", "rolex")).screen("Rolling pin", None, None)
        assert (result.decision, result.matches, result.hold_finding_ids) == ("pass", (), ())


class TestRegistry:
    def test_requests_are_not_blocked_while_a_rebuild_runs(self) -> None:
        """While a slow base build runs, screening answers at once from the old snapshot, then from the new one."""
        clock = ManualClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
        source = fake_source([keyword("fnd_old", "confirmed", "rolex")])
        entered, release = threading.Event(), threading.Event()
        slow = {"on": False}

        def builder(rules: Iterable[FindingRule]) -> Matcher:
            matcher = Matcher.build(rules)
            if slow["on"]:
                entered.set()
                assert release.wait(10)
            return matcher

        registry = MatcherRegistry(source, clock.now, builder=builder)
        screener = FindingsScreener(registry, clock)
        assert screener.screen("rolex", None, None).hold_finding_ids == ("fnd_old",)
        slow["on"] = True
        source.replace([keyword("fnd_new", "confirmed", "rolex")])
        rebuild = threading.Thread(target=registry.refresh_now, kwargs={"force": True})
        rebuild.start()
        try:
            assert entered.wait(5)
            started = time.monotonic()
            assert screener.screen("rolex", None, None).hold_finding_ids == ("fnd_old",)
            assert time.monotonic() - started < 0.5
        finally:
            release.set()
            rebuild.join(5)
        assert screener.screen("rolex", None, None).hold_finding_ids == ("fnd_new",)

    def test_an_unbuildable_finding_does_not_stop_other_changes(self) -> None:
        """A finding the matcher refuses is left out (and logged); the rest of the change still applies."""
        clock = ManualClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
        source = fake_source([keyword("fnd_a", "confirmed", "rolex")])
        registry = MatcherRegistry(source, clock.now)
        screener = FindingsScreener(registry, clock)
        assert screener.screen("rolex", None, None).decision == "hold"
        source.replace([ActiveFinding(FindingRule("fnd_b", "keyword", "B", "confirmed", patterns=()))])
        stop = threading.Event()
        stop.set()  # one round of the loop, which must not raise
        registry.run(stop)
        assert screener.screen("rolex", None, None).decision == "pass"  # fnd_a dismissed; fnd_b left out
        source.replace([keyword("fnd_c", "suspected", "rolex")])
        assert registry.refresh_now() is True
        assert screener.screen("rolex", None, None).decision == "review"

    def test_the_loop_stops_soon_after_its_event_is_set(self) -> None:
        """The background loop returns within one interval of being told to stop."""
        clock = ManualClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
        registry = MatcherRegistry(fake_source([]), clock.now, interval_s=0.05)
        stop = threading.Event()
        thread = threading.Thread(target=registry.run, args=(stop,))
        thread.start()
        time.sleep(0.1)
        stop.set()
        thread.join(1)
        assert not thread.is_alive()
        assert registry.current().finding_count == 0
