"""Base rebuilds owned by the pre-forked master: workers' registries only apply changes, and the
master builds a due base in its own loop, then replaces the workers one at a time.

The workers here are a fake pool, so the roll's order (fresh worker up before an old one stops,
never fewer serving than configured) is checked step by step, without gunicorn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from escrow.api.prefork import MasterMatcher
from escrow.ports import ManualClock
from escrow.screening import FindingRule, Matcher
from escrow.screening.registry import ActiveFinding, MatcherRegistry
from tests.unit.screening.test_registry import CHANGES, GatedBuilder, MemorySource, decision, refuses_many

WORKERS = 2


class FakePool:
    """Worker processes by pid; a spawned one is up once the test says so (or at once, if `boot_ticks` is 0)."""

    def __init__(self, count: int = WORKERS) -> None:
        self._next_pid = 100
        self.serving: list[int] = [self._new_pid() for _ in range(count)]  # oldest first
        self.up: set[int] = set(self.serving)
        self.spawned: list[int] = []
        self.retired: list[int] = []
        self.fewest_up = count  # the fewest workers up and serving at any point
        self.history: list[tuple[str, int]] = []

    def _new_pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def workers(self) -> list[int]:
        return list(self.serving)

    def spawn(self) -> int:
        pid = self._new_pid()
        self.serving.append(pid)
        self.spawned.append(pid)
        self.history.append(("spawn", pid))
        return pid

    def is_up(self, pid: int) -> bool:
        return pid in self.up

    def retire(self, pid: int) -> None:
        assert pid in self.serving
        self.serving.remove(pid)
        self.retired.append(pid)
        self.history.append(("retire", pid))
        self.fewest_up = min(self.fewest_up, sum(1 for p in self.serving if p in self.up))

    def boot(self) -> None:
        """Every spawned worker comes up."""
        self.up.update(self.serving)


def no_rebuild(source: MemorySource, clock: ManualClock, **bounds: Any) -> MatcherRegistry:
    return MatcherRegistry(source, clock.now, rebuilds_base=False, **bounds)


def problems(logs: Sequence[Mapping[str, Any]]) -> list[object]:
    """The warning and error events of captured logs."""
    return [e["event"] for e in logs if e["log_level"] in ("warning", "error")]


class Reads:
    """`after_read`: counts how often the master closed its connections."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


class TestNoRebuildMode:
    @pytest.mark.parametrize("change", sorted(CHANGES))
    def test_a_due_base_is_not_rebuilt_but_every_change_still_shows(
        self, source: MemorySource, clock: ManualClock, change: str
    ) -> None:
        """With the overlay over its bound, a poll applies the change through the overlay, starts no
        rebuild, and `base_due` says a base is due."""
        builder = GatedBuilder()
        registry = MatcherRegistry(source, clock.now, builder=builder, overlay_findings_max=0, rebuilds_base=False)
        base = registry.current().base
        assert registry.base_due() is False
        title, expected = CHANGES[change](source, clock)
        assert registry.poll() is True
        assert decision(registry, clock, title) == expected
        assert registry.base_due() is True
        assert not registry.rebuilding and registry.current().base is base
        assert registry.refresh_now() is False  # unforced: changes only, and none is pending
        assert registry.current().base is base
        assert builder.sizes == [4] + ([1] if change == "create" else [])  # the base once; the overlay's new finding

    def test_the_overlay_outgrows_its_bounds_until_a_forced_rebuild(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """Findings, patterns and age each make a base due without building it; a forced refresh
        (what the master does) folds the overlay into a new base and clears `base_due`."""
        registry = no_rebuild(source, clock, overlay_findings_max=1, overlay_patterns_max=3)
        base = registry.current().base
        source.create("fnd_a", "suspected", "aaaa")
        registry.poll()
        assert registry.base_due() is False
        source.create("fnd_b", "suspected", "bbbb")  # two findings > 1
        source.create("fnd_c", "suspected", "cc1", "cc2", "cc3", "cc4")  # and seven patterns > 3
        for _ in range(3):
            registry.poll()
        assert registry.base_due() is True and registry.current().base is base and not registry.rebuilding
        assert registry.current().overlay.size == 3
        assert decision(registry, clock, "aaaa bbbb cc4") == {f"fnd_{x}": "suspected" for x in "abc"}
        assert registry.refresh_now(force=True) is True
        assert registry.current().base is not base and registry.current().overlay.size == 0
        assert registry.base_due() is False
        aged = no_rebuild(source, clock, overlay_age_max_s=0.0)
        aged.current()
        assert aged.base_due() is False  # an empty overlay is never due, however old
        source.set_status("fnd_a", "confirmed")
        aged.poll()
        assert aged.base_due() is True and not aged.rebuilding

    def test_base_due_without_a_snapshot_and_after_a_refused_build(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """No snapshot yet is due; a set the builder refuses is not due again until something changes."""

        registry = MatcherRegistry(source, clock.now, builder=refuses_many, overlay_findings_max=0, rebuilds_base=False)
        assert registry.base_due() is True
        registry.current()
        source.create("fnd_new", "suspected", "prada")
        registry.poll()
        assert registry.base_due() is True
        with pytest.raises(ValueError, match="more than 4"):
            registry.refresh_now(force=True)
        assert registry.base_due() is False
        assert decision(registry, clock, "prada") == {"fnd_new": "suspected"}  # still shown through the overlay
        source.set_status("fnd_new", "confirmed")
        registry.poll()
        assert registry.base_due() is True


class TestMasterRoll:
    def test_no_due_base_applies_changes_and_rolls_nothing(self, source: MemorySource, clock: ManualClock) -> None:
        """A round with no due base only applies changes to the master's overlay, then closes its connections."""
        registry = no_rebuild(source, clock)
        base = registry.current().base
        reads = Reads()
        master = MasterMatcher(registry, after_read=reads)
        pool = FakePool()
        source.create("fnd_new", "suspected", "prada")
        master.tick(pool, 0.0)
        assert decision(registry, clock, "prada") == {"fnd_new": "suspected"}
        assert registry.current().base is base and not master.rolling and pool.history == []
        assert reads.count == 1
        source.set_status("fnd_new", "confirmed")
        master.tick(pool, 0.5)  # before the next check is due: nothing read
        assert reads.count == 1 and decision(registry, clock, "prada") == {"fnd_new": "suspected"}
        master.tick(pool, 1.0)
        assert reads.count == 2 and decision(registry, clock, "prada") == {"fnd_new": "confirmed"}

    def test_a_due_base_is_built_then_each_worker_replaced_after_its_successor_is_up(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """The master builds the due base, then spawns a fresh worker, waits until it is up, retires
        the oldest old one, and so on: never fewer workers up than configured, all old ones gone."""
        registry = no_rebuild(source, clock, overlay_findings_max=0)
        first = registry.current().base
        reads = Reads()
        master = MasterMatcher(registry, after_read=reads)
        pool = FakePool()
        old = pool.workers()
        source.create("fnd_new", "suspected", "prada")
        master.tick(pool, 0.0)
        assert registry.current().base is not first and registry.current().overlay.size == 0
        assert master.rolling and master.bases_built == 1 and reads.count == 1
        assert pool.history == [("spawn", pool.spawned[0])]
        master.tick(pool, 0.1)
        master.tick(pool, 5.0)  # the fresh worker is not up yet: nothing is stopped
        assert pool.retired == [] and len(pool.spawned) == 1
        pool.boot()
        master.tick(pool, 5.1)
        assert pool.retired == [old[0]] and len(pool.spawned) == 2
        master.tick(pool, 5.2)
        assert pool.retired == [old[0]]
        pool.boot()
        master.tick(pool, 5.3)
        assert pool.retired == old and not master.rolling and master.rolls_done == 1
        assert pool.workers() == pool.spawned and pool.fewest_up == WORKERS
        assert [kind for kind, _ in pool.history] == ["spawn", "retire", "spawn", "retire"]
        assert reads.count == 1  # no due check while rolling
        master.tick(pool, 5.4)
        assert reads.count == 2 and not master.rolling  # the next check: nothing due

    def test_a_fresh_worker_that_never_heartbeats_delays_the_roll_only_so_long(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """Past `boot_wait_s` with no heartbeat from the fresh worker, the old one is retired anyway, with a warning."""
        registry = no_rebuild(source, clock, overlay_findings_max=0)
        registry.current()
        master = MasterMatcher(registry, after_read=Reads(), boot_wait_s=10.0)
        pool = FakePool()
        old = pool.workers()
        source.create("fnd_new", "suspected", "prada")
        master.tick(pool, 0.0)
        master.tick(pool, 9.9)
        assert pool.retired == []
        with capture_logs() as logs:
            master.tick(pool, 10.0)
        assert pool.retired == [old[0]]
        assert problems(logs) == ["findings_worker_boot_slow"]

    def test_an_old_worker_that_exits_during_the_roll_is_not_waited_for(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """A worker gone mid-roll (gunicorn replaced it, from the new base) is skipped, not retired."""
        registry = no_rebuild(source, clock, overlay_findings_max=0)
        registry.current()
        master = MasterMatcher(registry, after_read=Reads())
        pool = FakePool()
        old = pool.workers()
        source.create("fnd_new", "suspected", "prada")
        master.tick(pool, 0.0)
        pool.serving.remove(old[1])  # crashed
        pool.boot()
        master.tick(pool, 0.1)
        assert pool.retired == [old[0]] and not master.rolling and len(pool.spawned) == 1

    def test_a_failed_build_is_logged_and_retried_at_the_next_check(
        self, source: MemorySource, clock: ManualClock
    ) -> None:
        """The source failing during the build keeps the old base serving and rolls nothing; the next
        due check builds it and rolls."""
        registry = no_rebuild(source, clock, overlay_findings_max=0)
        first = registry.current().base
        reads = Reads()
        master = MasterMatcher(registry, after_read=reads)
        pool = FakePool()
        source.create("fnd_new", "suspected", "prada")
        registry.poll()
        failing = {"on": True}
        active = source.active

        def flaky_active(now: datetime) -> list[ActiveFinding]:
            if failing["on"]:
                raise ConnectionError("database restarting")
            return active(now)

        source.active = flaky_active  # type: ignore[method-assign]
        with capture_logs() as logs:
            master.tick(pool, 0.0)
        assert problems(logs) == ["findings_master_refresh_failed"]
        assert registry.current().base is first and not master.rolling and pool.history == []
        assert reads.count == 1  # connections closed on failure too
        failing["on"] = False
        master.tick(pool, 0.5)
        assert not master.rolling
        master.tick(pool, 1.0)
        assert registry.current().base is not first and master.rolling
        assert decision(registry, clock, "prada") == {"fnd_new": "suspected"}

    def test_a_refused_set_is_not_rebuilt_every_second(self, source: MemorySource, clock: ManualClock) -> None:
        """A base the builder refuses is logged once and not tried again until a finding changes."""
        calls: list[int] = []

        def refuses_many(rules: Iterable[FindingRule]) -> Matcher:
            rules = list(rules)
            calls.append(len(rules))
            if len(rules) > 4:
                raise ValueError("more than 4 findings")
            return Matcher.build(rules)

        registry = MatcherRegistry(source, clock.now, builder=refuses_many, overlay_findings_max=0, rebuilds_base=False)
        registry.current()
        master = MasterMatcher(registry, after_read=Reads())
        pool = FakePool()
        source.create("fnd_new", "suspected", "prada")
        with capture_logs() as logs:
            for second in range(5):
                master.tick(pool, float(second))
        assert problems(logs) == ["findings_master_refresh_failed"]
        assert calls.count(5) == 2 and pool.history == []  # one attempt: the set, then what builds one by one
        assert decision(registry, clock, "prada") == {"fnd_new": "suspected"}
        clock.advance(timedelta(seconds=1))
        source.set_status("fnd_con", "dismissed")  # four active findings again: buildable, and still due
        master.tick(pool, 5.0)
        assert master.rolling and master.bases_built == 1
        assert registry.current().overlay.size == 0
        assert decision(registry, clock, "prada rolex") == {"fnd_new": "suspected"}
