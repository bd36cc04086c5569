"""The live matcher: an index of the active findings, rebuilt off the request path.

Why this shape: building a `Matcher` takes seconds at a million patterns, and screening sits
in the checkout's critical path. So requests only ever read `MatcherRegistry.current()`, one
reference to an immutable `Snapshot`; a background loop (`run`) polls a cheap change marker
every `interval_s`, builds a new snapshot when the findings changed or the earliest
`expires_at` passed, and swaps it in with a single assignment. The old snapshot serves every
request until then. Builds are serialised by a lock that readers never take (except the very
first build: screening before any index exists would pass orders unscreened).

An expired finding stops matching at once, not at the next rebuild: each snapshot knows the
expiry of its findings and drops their matches at screening time.

The registry does no I/O of its own: a `FindingSource` (the database, in the service layer)
supplies the marker and the active findings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from escrow.screening.matcher import FindingRule, Match, Matcher

log = structlog.get_logger(__name__)

REFRESH_INTERVAL_S_DEFAULT = 0.2
"""Poll interval of the marker: a change is visible to every process within about this plus
the build time (milliseconds for thousands of patterns, ~14 s for a million)."""


@dataclass(frozen=True, slots=True)
class ActiveFinding:
    """A finding that screening must look for now, and until when."""

    rule: FindingRule
    expires_at: datetime | None = None


class FindingSource(Protocol):
    def marker(self) -> int:
        """A value that changes whenever any finding is created or changes state."""
        ...

    def active(self, now: datetime) -> list[ActiveFinding]:
        """Every finding that is suspected or confirmed and not expired at `now`."""
        ...


Builder = Callable[[Iterable[FindingRule]], Matcher]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One immutable index of the findings active at `built_at`, as of change `marker`."""

    matcher: Matcher
    marker: int
    statuses: Mapping[str, str]  # finding id -> "suspected" | "confirmed"
    expiries: Mapping[str, datetime]  # finding id -> expires_at, for findings that expire
    next_expiry: datetime | None
    built_at: datetime
    finding_count: int

    def screen(
        self, title: str, seller_id: str | None, listing_id: str | None, *, now: datetime
    ) -> list[tuple[Match, str]]:
        """Matches of findings still active at `now`, each with its finding's status."""
        found = self.matcher.screen(title, seller_id, listing_id)
        if self.next_expiry is not None and now >= self.next_expiry:
            found = [m for m in found if not (m.finding_id in self.expiries and self.expiries[m.finding_id] <= now)]
        return [(m, self.statuses[m.finding_id]) for m in found]


class MatcherRegistry:
    """Holds the current `Snapshot` and rebuilds it when the findings change.

    `now` is the service clock (`Clock.now`), which decides what has expired; `builder` is
    `Matcher.build` unless a test needs another; `interval_s` is the poll interval of `run`.
    """

    def __init__(
        self,
        source: FindingSource,
        now: Callable[[], datetime],
        *,
        builder: Builder = Matcher.build,
        interval_s: float = REFRESH_INTERVAL_S_DEFAULT,
    ) -> None:
        if not 0 < interval_s <= 60:
            raise ValueError("interval_s must be in (0, 60]")
        self._source = source
        self._now = now
        self._builder = builder
        self.interval_s = interval_s
        self._snapshot: Snapshot | None = None
        self._build_lock = threading.Lock()
        self._failed_marker: int | None = None  # don't rebuild a broken set every interval

    def current(self) -> Snapshot:
        """The snapshot to screen with; never waits for a rebuild once one exists."""
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        with self._build_lock:
            if self._snapshot is None:
                self._snapshot = self._build(self._source.marker())
            return self._snapshot

    def refresh_now(self, *, force: bool = False) -> bool:
        """Rebuild now, in this thread, if the findings changed or one expired (or `force`).

        Returns whether a new snapshot was swapped in. Raises what the source or the builder
        raises; the snapshot in service stays in service.
        """
        with self._build_lock:
            marker = self._source.marker()
            if not force and not self._due(marker):
                return False
            try:
                snapshot = self._build(marker)
            except ValueError:
                self._failed_marker = marker
                raise
            self._snapshot = snapshot  # the swap: one reference assignment
            self._failed_marker = None
            return True

    def warm(self) -> bool:
        """Build the first snapshot now, at start-up; returns whether one is in service.

        Call it before serving: a request that finds no snapshot builds one on its own thread,
        and order intake screens inside its transaction, where a second SQLite connection
        would wait on the write lock that transaction holds. A failure is logged, not raised
        (an unmigrated database must not stop the process from starting).
        """
        try:
            self.current()
        except Exception:  # logged; the loop and the first request try again
            log.exception("findings_matcher_warm_failed")
            return False
        return True

    def run(self, stop: threading.Event) -> None:
        """The background loop: refresh every `interval_s` until `stop` is set."""
        while True:
            try:
                self.refresh_now()
            except Exception:  # a failed round keeps the old matcher and is retried; never kill the API
                log.exception("findings_matcher_refresh_failed")
            if stop.wait(self.interval_s):
                return

    def _due(self, marker: int) -> bool:
        snapshot = self._snapshot
        if snapshot is None:
            return True
        if snapshot.next_expiry is not None and self._now() >= snapshot.next_expiry:
            return True
        return marker != snapshot.marker and marker != self._failed_marker

    def _build(self, marker: int) -> Snapshot:
        now = self._now()
        active = self._source.active(now)
        started = time.monotonic()
        matcher = self._builder(item.rule for item in active)
        expiries = {a.rule.finding_id: a.expires_at for a in active if a.expires_at is not None}
        snapshot = Snapshot(
            matcher=matcher,
            marker=marker,
            statuses={a.rule.finding_id: a.rule.status for a in active},
            expiries=expiries,
            next_expiry=min(expiries.values(), default=None),
            built_at=now,
            finding_count=len(active),
        )
        log.info(
            "findings_matcher_built",
            marker=marker,
            findings=len(active),
            patterns=matcher.pattern_count,
            build_ms=int((time.monotonic() - started) * 1000),
        )
        return snapshot
