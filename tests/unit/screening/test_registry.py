"""The two-tier matcher registry: changes show within one poll, before, during and after a slow base rebuild.

The base builder here is gated by an Event, standing for the ~14 s of a million patterns: a
test decides when it finishes, so "during the rebuild" is a state, not a race.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from escrow.ports import ManualClock
from escrow.screening import FindingRule, Matcher
from escrow.screening.registry import ActiveFinding, FindingState, MatcherRegistry

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@dataclass
class _Row:
    rule: FindingRule  # rule.status is the stored status, "dismissed" included
    expires_at: datetime | None
    updated_at: datetime


class MemorySource:
    """Findings in memory with the database's contract: every change stamps `updated_at` from
    the clock (or `stamp`, to stand for a long transaction) and bumps the revision."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self.revision = 0
        self.after_active: Callable[[], None] | None = None  # runs once `active` has read

    def create(
        self,
        finding_id: str,
        status: str,
        *patterns: str,
        expires_at: datetime | None = None,
        stamp: datetime | None = None,
    ) -> None:
        rule = FindingRule(finding_id, "keyword", finding_id.upper(), status, patterns=patterns)
        self._write(finding_id, _Row(rule, expires_at, stamp or self._clock.now()))

    def set_status(self, finding_id: str, status: str, stamp: datetime | None = None) -> None:
        row = self._rows[finding_id]
        self._write(finding_id, _Row(replace(row.rule, status=status), row.expires_at, stamp or self._clock.now()))

    def replace(self, findings: list[ActiveFinding]) -> None:
        """Make `findings` the active set: new or changed ones are written, missing ones dismissed."""
        wanted = {f.rule.finding_id: f for f in findings}
        with self._lock:
            now = self._clock.now()
            for fid, row in self._rows.items():
                if fid not in wanted and row.rule.status != "dismissed":
                    self._rows[fid] = _Row(replace(row.rule, status="dismissed"), row.expires_at, now)
            for fid, item in wanted.items():
                self._rows[fid] = _Row(item.rule, item.expires_at, now)
            self.revision += 1

    def _write(self, finding_id: str, row: _Row) -> None:
        with self._lock:
            self._rows[finding_id] = row
            self.revision += 1

    def marker(self) -> int:
        return self.revision

    def active(self, now: datetime) -> list[ActiveFinding]:
        with self._lock:
            found = [ActiveFinding(r.rule, r.expires_at) for r in self._rows.values() if self._live(r, now)]
        hook, self.after_active = self.after_active, None
        if hook is not None:
            hook()
        return found

    def changed_since(self, since: datetime) -> list[FindingState]:
        with self._lock:
            return [
                FindingState(fid, r.rule.status, r.expires_at) for fid, r in self._rows.items() if r.updated_at >= since
            ]

    def rules(self, finding_ids: Collection[str], now: datetime) -> list[ActiveFinding]:
        with self._lock:
            rows = [self._rows[fid] for fid in finding_ids if fid in self._rows]
        return [ActiveFinding(r.rule, r.expires_at) for r in rows if self._live(r, now)]

    @staticmethod
    def _live(row: _Row, now: datetime) -> bool:
        return row.rule.status in ("suspected", "confirmed") and (row.expires_at is None or row.expires_at > now)


class GatedBuilder:
    """`Matcher.build` that, once `slow` is set, waits for `release` (a base of a million patterns)."""

    def __init__(self) -> None:
        self.slow = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, rules: Iterable[FindingRule]) -> Matcher:
        rules = list(rules)
        self.sizes.append(len(rules))
        matcher = Matcher.build(rules)
        if self.slow and len(rules) > 2:  # the base; the overlay (one or two findings here) stays fast
            self.entered.set()
            assert self.release.wait(10)
        return matcher


def decision(registry: MatcherRegistry, clock: ManualClock, title: str) -> dict[str, str]:
    """{finding id: status} of what `title` matches, timed: screening must never wait."""
    started = time.monotonic()
    found = registry.current().screen(title, None, None, now=clock.now())
    assert time.monotonic() - started < 0.1
    return {m.finding_id: status for m, status in found}


def refuses_many(rules: Iterable[FindingRule]) -> Matcher:
    """A builder that refuses more than four findings: a refusal no single finding explains."""
    rules = list(rules)
    if len(rules) > 4:
        raise ValueError("more than 4 findings")
    return Matcher.build(rules)


# What each change does, and what screening must say afterwards.
def create(source: MemorySource, clock: ManualClock) -> tuple[str, dict[str, str]]:
    source.create("fnd_new", "suspected", "prada")
    return "prada bag", {"fnd_new": "suspected"}


def confirm(source: MemorySource, clock: ManualClock) -> tuple[str, dict[str, str]]:
    source.set_status("fnd_sus", "confirmed")
    return "gucci bag", {"fnd_sus": "confirmed"}


def dismiss(source: MemorySource, clock: ManualClock) -> tuple[str, dict[str, str]]:
    source.set_status("fnd_con", "dismissed")
    return "rolex watch", {}


def expire(source: MemorySource, clock: ManualClock) -> tuple[str, dict[str, str]]:
    clock.advance(timedelta(minutes=10))
    return "chanel bag", {}


CHANGES = {"create": create, "confirm": confirm, "dismiss": dismiss, "expire": expire}


class TestOverlay:
    def test_each_change_shows_after_one_poll_without_a_base_rebuild(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """Create, confirm, dismiss and expire each show after one poll; the base is not rebuilt."""
        builder = GatedBuilder()
        registry = MatcherRegistry(source, clock.now, builder=builder)
        base = registry.current().base
        assert decision(registry, clock, "gucci rolex chanel") == {
            "fnd_sus": "suspected", "fnd_con": "confirmed", "fnd_exp": "confirmed"
        }  # fmt: skip
        for change in CHANGES.values():
            title, expected = change(source, clock)
            assert registry.poll() is True
            assert decision(registry, clock, title) == expected
        assert registry.poll() is False  # nothing changed since
        assert registry.current().base is base and not registry.rebuilding
        assert builder.sizes == [4, 1]  # the base once; the overlay once, for the one new finding
        overlay = registry.current().overlay
        assert overlay.added == {"fnd_new"} and overlay.removed == {"fnd_con", "fnd_exp"}
        assert overlay.statuses == {"fnd_sus": "confirmed", "fnd_new": "suspected"}
        assert registry.current().finding_count == 3

    def test_an_expiry_shows_at_once_and_the_next_poll_records_it(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """A finding stops matching when its expiry passes, before any poll; the poll then lists it as removed."""
        registry = MatcherRegistry(source, clock.now)
        registry.current()
        source.create("fnd_later", "suspected", "dior", expires_at=T0 + timedelta(minutes=5))
        registry.poll()
        assert decision(registry, clock, "dior chanel") == {"fnd_later": "suspected", "fnd_exp": "confirmed"}
        clock.advance(timedelta(minutes=10))
        assert decision(registry, clock, "dior chanel") == {}
        assert registry.poll() is True
        overlay = registry.current().overlay
        assert overlay.removed == {"fnd_exp"} and overlay.added == set() and registry.current().next_expiry is None
        assert registry.poll() is False

    def test_tiers_merge_in_title_order_without_duplicates(self, source: MemorySource, clock: ManualClock) -> None:
        """Base and overlay matches come back in title order, each (finding, pattern, span) once."""
        registry = MatcherRegistry(source, clock.now)
        source.create("fnd_new", "confirmed", "prada", "gucci")
        registry.poll()
        found = registry.current().screen("prada and gucci", None, None, now=clock.now())
        assert [(m.finding_id, m.matched) for m, _ in found] == [
            ("fnd_new", "prada"), ("fnd_new", "gucci"), ("fnd_sus", "gucci")
        ]  # fmt: skip

    def test_an_unbuildable_finding_is_left_out_and_other_changes_still_apply(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """A finding the matcher refuses is logged and skipped; it never blocks the next change."""
        registry = MatcherRegistry(source, clock.now)
        registry.current()
        source.create("fnd_bad", "confirmed")  # no pattern: the matcher refuses it
        source.create("fnd_new", "suspected", "prada")
        assert registry.poll() is True
        assert decision(registry, clock, "prada") == {"fnd_new": "suspected"}
        assert registry.current().overlay.added == {"fnd_new"}
        source.set_status("fnd_con", "dismissed")
        assert registry.poll() is True
        assert decision(registry, clock, "rolex prada") == {"fnd_new": "suspected"}
        assert registry.refresh_now(force=True) is True  # a full build leaves it out too
        assert decision(registry, clock, "rolex prada gucci") == {"fnd_new": "suspected", "fnd_sus": "suspected"}


class TestBaseRebuild:
    @pytest.mark.parametrize("phase", ["before", "during", "after"])
    @pytest.mark.parametrize("change", sorted(CHANGES))
    def test_a_change_shows_within_one_poll_and_survives_the_rebuild(
        self, source: MemorySource, clock: ManualClock, change: str, phase: str
    ) -> None:
        """Whatever the change and wherever it falls against a slow base rebuild, one poll shows it,
        screening never waits, and the new base plus its overlay still show it."""
        builder = GatedBuilder()
        registry = MatcherRegistry(source, clock.now, builder=builder, overlay_findings_max=0)
        first = registry.current().base
        builder.slow = True
        try:
            if phase == "before":
                title, expected = CHANGES[change](source, clock)
                registry.poll()  # applies it and, the overlay being over its bound, starts a rebuild
                assert decision(registry, clock, title) == expected
            else:
                source.create("fnd_fill", "suspected", "zzzq")  # over the bound: starts a rebuild
                registry.poll()
            assert builder.entered.wait(5) and registry.rebuilding
            if phase == "during":
                title, expected = CHANGES[change](source, clock)
                registry.poll()
                assert decision(registry, clock, title) == expected
                assert registry.current().base is first  # still the old base, plus the overlay
            else:
                assert decision(registry, clock, "hermes") == {"fnd_base": "confirmed"}  # the old base answers at once
        finally:
            builder.release.set()
        assert registry.wait_for_rebuild(5)
        assert registry.current().base is not first
        if phase == "after":
            builder.release.clear()
            title, expected = CHANGES[change](source, clock)
            registry.poll()
            builder.release.set()
        assert decision(registry, clock, title) == expected  # nothing lost when the rebuild finished
        registry.poll()
        assert registry.wait_for_rebuild(5)
        assert decision(registry, clock, title) == expected
        if phase == "before":
            assert registry.current().overlay.size == 0 or change == "expire"  # folded into the new base

    def test_a_change_stamped_before_the_point_but_committed_after_the_read_is_not_lost(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """A transaction that stamped updated_at before the base's snapshot point and committed after the
        base read the active set is still covered: the overlay looks CHANGE_MARGIN further back."""
        registry = MatcherRegistry(source, clock.now, overlay_findings_max=0)
        registry.current()
        clock.advance(timedelta(seconds=30))
        source.after_active = lambda: source.set_status("fnd_con", "dismissed", stamp=T0 + timedelta(seconds=10))
        assert registry.refresh_now(force=True) is True
        assert decision(registry, clock, "rolex") == {}
        assert registry.current().overlay.removed == {"fnd_con"}

    def test_without_the_margin_that_change_would_be_lost(self, source: MemorySource, clock: ManualClock) -> None:
        """The same race with no margin keeps matching a dismissed finding: what the margin is for."""
        registry = MatcherRegistry(source, clock.now, change_margin=timedelta(0))
        registry.current()
        clock.advance(timedelta(seconds=30))
        source.after_active = lambda: source.set_status("fnd_con", "dismissed", stamp=T0 + timedelta(seconds=10))
        registry.refresh_now(force=True)
        assert decision(registry, clock, "rolex") == {"fnd_con": "confirmed"}

    def test_the_loop_shows_changes_within_one_second_while_the_base_rebuilds(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """With the real loop and a base rebuild stuck in the background, every change shows in < 1 s."""
        builder = GatedBuilder()
        registry = MatcherRegistry(source, clock.now, builder=builder, interval_s=0.05, overlay_findings_max=0)
        registry.current()
        builder.slow = True
        stop = threading.Event()
        loop = threading.Thread(target=registry.run, args=(stop,))
        loop.start()
        try:
            source.create("fnd_fill", "suspected", "zzzq")
            assert builder.entered.wait(5)
            for change in ("create", "confirm", "dismiss"):
                title, expected = CHANGES[change](source, clock)
                started = time.monotonic()
                while decision(registry, clock, title) != expected:
                    assert time.monotonic() - started < 1.0, change
                    time.sleep(0.01)
            assert registry.rebuilding
        finally:
            builder.release.set()
            stop.set()
            loop.join(5)
        assert registry.wait_for_rebuild(5)
        assert decision(registry, clock, "prada gucci rolex") == {"fnd_new": "suspected", "fnd_sus": "confirmed"}

    def test_the_overlay_bounds_decide_when_the_base_is_rebuilt(self, source: MemorySource, clock: ManualClock) -> None:
        """Findings, patterns and age each trigger a background rebuild; an empty overlay never does."""
        registry = MatcherRegistry(source, clock.now, overlay_findings_max=1, overlay_patterns_max=3)
        base = registry.current().base
        source.create("fnd_a", "suspected", "aaaa")
        registry.poll()
        assert not registry.rebuilding and registry.current().base is base
        source.create("fnd_b", "suspected", "bbbb")  # two findings > 1
        registry.poll()
        assert registry.wait_for_rebuild(5) and registry.current().base is not base
        assert registry.current().overlay.size == 0
        base = registry.current().base
        source.create("fnd_c", "suspected", "cc1", "cc2", "cc3", "cc4")  # four patterns > 3
        registry.poll()
        assert registry.wait_for_rebuild(5) and registry.current().base is not base
        aged = MatcherRegistry(source, clock.now, overlay_age_max_s=0.0)
        base = aged.current().base
        aged.poll()
        assert not aged.rebuilding and aged.current().base is base  # nothing to fold in
        source.set_status("fnd_a", "confirmed")
        aged.poll()
        assert aged.wait_for_rebuild(5) and aged.current().base is not base

    def test_an_older_base_never_replaces_a_newer_one(self, source: MemorySource, clock: ManualClock) -> None:
        """A background rebuild that started before a synchronous one finished is discarded."""
        builder = GatedBuilder()
        registry = MatcherRegistry(source, clock.now, builder=builder, overlay_findings_max=0)
        registry.current()
        builder.slow = True
        source.create("fnd_new", "suspected", "prada")
        registry.poll()
        assert builder.entered.wait(5)
        builder.slow = False
        source.set_status("fnd_new", "confirmed")
        registry.refresh_now(force=True)
        newer = registry.current().base
        builder.release.set()
        assert registry.wait_for_rebuild(5)
        assert registry.current().base is newer
        assert decision(registry, clock, "prada") == {"fnd_new": "confirmed"}

    def test_a_base_that_cannot_be_built_keeps_the_old_one_serving(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """A refusal no single finding explains (too many patterns in all) keeps the snapshot in service."""

        registry = MatcherRegistry(source, clock.now, builder=refuses_many)
        served = registry.current()
        source.create("fnd_new", "suspected", "prada")
        with pytest.raises(ValueError, match="more than 4"):
            registry.refresh_now(force=True)
        assert registry.current() is served
        assert registry.refresh_now() is True  # the change still reaches screening through the overlay
        assert decision(registry, clock, "prada") == {"fnd_new": "suspected"}
