"""The live matcher: a two-tier index of the active findings, kept current off the request path.

Why this shape: building a `Matcher` takes ~14 s at a million patterns, and a change to the
findings (created, confirmed, dismissed, expired) must reach every API process within a
second, without blocking a request. So the index has two tiers, like an LSM tree:

- the BASE: a full matcher of the findings active at its snapshot point, rebuilt rarely, in a
  background thread, while the previous base keeps serving;
- the OVERLAY: what changed since the base's snapshot point, built in milliseconds on every
  change: findings created since get a small matcher of their own; a status change of a base
  finding (confirmed) overrides the base's status; a base finding dismissed or expired is
  listed as removed and its matches are dropped at screening time.

Screening is base matches (minus removed findings, with overridden statuses) plus overlay
matches. Requests only ever read `MatcherRegistry.current()`, one reference to an immutable
`Snapshot` (base + overlay), which a single assignment replaces.

The background loop (`run`) polls a cheap change marker every `interval_s`. When it moved (or
an expiry passed), it asks the source for every finding whose `updated_at` is at or after the
base's `since` and recomputes the overlay: changes show within one poll, whatever the base's
size. When the overlay grows past OVERLAY_FINDINGS_MAX findings or OVERLAY_PATTERNS_MAX
patterns, or is older than OVERLAY_AGE_MAX_S, a new base is due. Who builds it depends on
`rebuilds_base`:

- True (one API process: `escrow serve`, tests): the loop builds it in a background thread;
  polls keep applying changes to the old base meanwhile.
- False (a pre-forked worker of `escrow serve --workers N`): never. A rebuild in a worker would
  compete for the GIL with its requests, and its new base would be private memory where the
  old one was shared with the sibling workers. The gunicorn master, which serves no request,
  consults `base_due`, builds the base itself and replaces the workers by fresh forks that
  share it (escrow.api.prefork). Until then the overlay may grow past its bounds: every change
  still shows within one poll, each overlay round just costs more.

Nothing is lost across a base rebuild: a new base takes its snapshot point from the clock
BEFORE it reads the active findings, and its overlay covers every finding updated at or after
that point less CHANGE_MARGIN. A change committed after the base's read is stamped (by its own
transaction) no earlier than the margin before the point, unless its transaction took longer
than the margin between stamping and committing, or the writer's clock is that far behind:
the margin is sized far beyond both. The overlay is recomputed from the source's current
state each time (not accumulated), so seeing a change twice is harmless.

The registry does no I/O of its own: a `FindingSource` (the database, in the service layer)
supplies the marker, the active findings, and what changed since a point.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Protocol

import structlog

from escrow.screening.limits import MATCHES_PER_TITLE_MAX
from escrow.screening.matcher import FindingRule, Match, Matcher

log = structlog.get_logger(__name__)

REFRESH_INTERVAL_S_DEFAULT: Final = 0.2
"""Poll interval of the marker: a change is visible to every process within about this plus
the overlay's build (milliseconds), whatever the number of patterns in the base."""

OVERLAY_FINDINGS_MAX: Final = 500
"""Findings the overlay may differ from the base by (created, restatused, removed) before a
new base is built; each overlay round re-reads and re-classifies them."""

OVERLAY_PATTERNS_MAX: Final = 20_000
"""Patterns in the overlay's matcher before a new base is built: it is rebuilt whenever a
finding is created, at ~14 us a pattern (~0.3 s here), so it must stay small."""

OVERLAY_AGE_MAX_S: Final = 3_600.0
"""A non-empty overlay older than this folds into a new base, so removed findings do not sit
in the base's memory for ever. Rare on purpose: at a million patterns a base costs ~14 s of a
core, and under `escrow serve --workers N` a replacement of every worker."""

CHANGE_MARGIN: Final = timedelta(seconds=60)
"""How far before a base's snapshot point its overlay still looks for changes: longer than any
findings transaction lasts between stamping `updated_at` and committing, plus clock skew
between API hosts (see the module docstring)."""

_SCREENED: Final = frozenset({"suspected", "confirmed"})


@dataclass(frozen=True, slots=True)
class ActiveFinding:
    """A finding that screening must look for now, and until when."""

    rule: FindingRule
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FindingState:
    """What screening needs to know about a changed finding: its stored status and expiry."""

    finding_id: str
    status: str  # "suspected" | "confirmed" | "dismissed" (an expired one keeps its status)
    expires_at: datetime | None = None

    def active_at(self, now: datetime) -> bool:
        return self.status in _SCREENED and (self.expires_at is None or self.expires_at > now)


class FindingSource(Protocol):
    def marker(self) -> int:
        """A value that changes whenever any finding is created or changes state."""
        ...

    def active(self, now: datetime) -> list[ActiveFinding]:
        """Every finding that is suspected or confirmed and not expired at `now`."""
        ...

    def changed_since(self, since: datetime) -> list[FindingState]:
        """Every finding (whatever its status) whose `updated_at` is at or after `since`."""
        ...

    def rules(self, finding_ids: Collection[str], now: datetime) -> list[ActiveFinding]:
        """Those of `finding_ids` that are active at `now`, with their rules."""
        ...


Builder = Callable[[Iterable[FindingRule]], Matcher]


@dataclass(frozen=True, slots=True)
class Base:
    """A full matcher of the findings active at `point`; changes since `since` may be missing."""

    matcher: Matcher
    statuses: Mapping[str, str]  # finding id -> "suspected" | "confirmed"
    expiries: Mapping[str, datetime]  # finding id -> expires_at, for findings that expire
    point: datetime  # the clock when the active set was read (before reading it)
    since: datetime  # point - CHANGE_MARGIN: where its overlays start looking
    marker: int  # the marker read before the active set
    sequence: int  # bases in build-start order: an older build never replaces a newer one
    built_monotonic: float


@dataclass(frozen=True, slots=True)
class Overlay:
    """How the findings differ from a base's, recomputed from the source at each change."""

    matcher: Matcher | None = None  # findings created since the base (None: no such finding)
    added: frozenset[str] = frozenset()  # ids indexed by `matcher`
    statuses: Mapping[str, str] = field(default_factory=dict)  # overrides, and the added findings' statuses
    removed: frozenset[str] = frozenset()  # base or added findings dismissed or expired
    expiries: Mapping[str, datetime] = field(default_factory=dict)  # of added findings

    @property
    def size(self) -> int:
        """Findings the overlay differs from its base by (what OVERLAY_FINDINGS_MAX bounds)."""
        return len(self.added) + len(self.removed - self.added) + sum(1 for k in self.statuses if k not in self.added)

    @property
    def pattern_count(self) -> int:
        return self.matcher.pattern_count if self.matcher is not None else 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One immutable view to screen with: a base and its overlay, as of change `marker`."""

    base: Base
    overlay: Overlay
    marker: int
    next_expiry: datetime | None
    built_at: datetime
    finding_count: int

    def screen(
        self, title: str, seller_id: str | None, listing_id: str | None, *, now: datetime
    ) -> list[tuple[Match, str]]:
        """Matches of findings still active at `now`, each with its finding's status, in title order.

        The title is normalised once per tier that has patterns (a few microseconds); the tiers
        index disjoint findings, and matches are de-duplicated anyway.
        """
        base, overlay = self.base, self.overlay
        expiring = self.next_expiry is not None and now >= self.next_expiry
        found: list[tuple[Match, str]] = []
        for m in base.matcher.screen(title, seller_id, listing_id):
            fid = m.finding_id
            if fid in overlay.removed:
                continue
            if expiring and fid in base.expiries and base.expiries[fid] <= now:
                continue
            found.append((m, overlay.statuses.get(fid) or base.statuses[fid]))
        if overlay.matcher is None:
            return found
        extra: list[tuple[Match, str]] = []
        for m in overlay.matcher.screen(title, seller_id, listing_id):
            fid = m.finding_id
            if fid in overlay.removed:
                continue
            if expiring and fid in overlay.expiries and overlay.expiries[fid] <= now:
                continue
            extra.append((m, overlay.statuses[fid]))
        if not extra:
            return found
        merged = {(m.finding_id, m.pattern, m.start, m.end): (m, s) for m, s in (*found, *extra)}
        ordered = sorted(merged.values(), key=lambda ms: (ms[0].start, ms[0].end, ms[0].finding_id, ms[0].pattern))
        return ordered[:MATCHES_PER_TITLE_MAX]


class MatcherRegistry:
    """Holds the current `Snapshot`: applies changes through the overlay, rebuilds the base rarely.

    `now` is the service clock (`Clock.now`), which decides what has expired and stamps each
    base's snapshot point; `builder` is `Matcher.build` unless a test needs another (a slow
    one, to stand for a million patterns); `interval_s` is the poll interval of `run`; the
    `overlay_*` bounds decide when a base is due. With `rebuilds_base` False, only a forced
    `refresh_now` builds a base, the very first one aside: the process that owns rebuilds
    watches `base_due` and replaces this one (see the module docstring). It is an attribute,
    not only an argument, because a pre-forked server switches the registry its app already
    built before forking the workers.
    """

    def __init__(
        self,
        source: FindingSource,
        now: Callable[[], datetime],
        *,
        builder: Builder = Matcher.build,
        interval_s: float = REFRESH_INTERVAL_S_DEFAULT,
        overlay_findings_max: int = OVERLAY_FINDINGS_MAX,
        overlay_patterns_max: int = OVERLAY_PATTERNS_MAX,
        overlay_age_max_s: float = OVERLAY_AGE_MAX_S,
        change_margin: timedelta = CHANGE_MARGIN,
        rebuilds_base: bool = True,
    ) -> None:
        if not 0 < interval_s <= 60:
            raise ValueError("interval_s must be in (0, 60]")
        self._source = source
        self._now = now
        self._builder = builder
        self.interval_s = interval_s
        self.overlay_findings_max = overlay_findings_max
        self.overlay_patterns_max = overlay_patterns_max
        self.overlay_age_max_s = overlay_age_max_s
        self._margin = change_margin
        self.rebuilds_base = rebuilds_base
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()  # serialises swaps; readers never take it (but the very first build)
        self._sequence = itertools.count(1)  # next() is atomic: bases may start on two threads
        self._rules: dict[str, ActiveFinding] = {}  # rules of findings created since the base (immutable)
        self._rebuild: threading.Thread | None = None
        self._failed_base_marker: int | None = None  # don't rebuild an unbuildable set every interval
        self._failed_marker: int | None = None  # nor recompute an overlay that failed, until a change

    # --- reading ---------------------------------------------------------------------------

    def current(self) -> Snapshot:
        """The snapshot to screen with; never waits for a rebuild once one exists."""
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        with self._lock:
            if self._snapshot is None:
                self._install(self._build_base())
            assert self._snapshot is not None  # noqa: S101  # _install sets it or raises
            return self._snapshot

    @property
    def rebuilding(self) -> bool:
        """Whether a base rebuild is running in the background."""
        thread = self._rebuild
        return thread is not None and thread.is_alive()

    def base_due(self) -> bool:
        """Whether a new base is due for the snapshot in service: there is none yet, or its overlay
        is over a bound or too old. False after a build that the builder refused, until a change
        (rebuilding the same refused set would fail the same way). Reads nothing from the source."""
        snapshot = self._snapshot
        return snapshot is None or self._base_due(snapshot)

    # --- refreshing ------------------------------------------------------------------------

    def refresh_now(self, *, force: bool = False) -> bool:
        """Bring the snapshot up to date in this thread; returns whether a new one was swapped in.

        Applies changes through the overlay; rebuilds the base here, synchronously, when `force`,
        when there is no snapshot yet, or when one is due and this registry `rebuilds_base` (the
        loop rebuilds in the background instead; a pre-forked master forces it). Raises what the
        source or the builder raises; the snapshot in service stays in service.
        """
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None or force or (self.rebuilds_base and self._base_due(snapshot)):
                try:
                    self._install(self._build_base())
                except ValueError:
                    self._failed_base_marker = self._source.marker()
                    raise
                return True
            return self._apply_changes(snapshot)

    def poll(self) -> bool:
        """One round of the loop: apply changes through the overlay now; if this registry
        `rebuilds_base`, start a base rebuild in the background when one is due (otherwise the
        overlay keeps growing until the owner of rebuilds replaces this process). Builds the first
        snapshot here if there is none. Returns whether a new snapshot was swapped in."""
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None:
                self._install(self._build_base())
                return True
            swapped = self._apply_changes(snapshot)
            due = self.rebuilds_base and self._base_due(self._snapshot or snapshot)
        if due and not self.rebuilding:
            self._rebuild = threading.Thread(target=self._rebuild_in_background, name="matcher-rebuild", daemon=True)
            self._rebuild.start()
        return swapped

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
        """The background loop: `poll` every `interval_s` until `stop` is set.

        A base rebuild still running when `stop` is set is a daemon thread: it ends with the
        process (its result would only be swapped into a registry nobody reads).
        """
        while True:
            try:
                self.poll()
            except Exception:  # a failed round keeps the old snapshot and is retried; never kill the API
                log.exception("findings_matcher_refresh_failed")
            if stop.wait(self.interval_s):
                return

    def wait_for_rebuild(self, timeout_s: float) -> bool:
        """Wait for a background base rebuild to finish (tests, benchmarks); True if none runs."""
        thread = self._rebuild
        if thread is not None:
            thread.join(timeout_s)
        return not self.rebuilding

    # --- internals -------------------------------------------------------------------------

    def _base_due(self, snapshot: Snapshot) -> bool:
        overlay = snapshot.overlay
        if self._failed_base_marker is not None and self._failed_base_marker == snapshot.marker:
            return False
        size = overlay.size
        if size > self.overlay_findings_max or overlay.pattern_count > self.overlay_patterns_max:
            return True
        return size > 0 and time.monotonic() - snapshot.base.built_monotonic > self.overlay_age_max_s

    def _rebuild_in_background(self) -> None:
        """Build a new base off every lock, then install it with the overlay of what changed meanwhile."""
        try:
            base = self._build_base()
        except ValueError:
            self._failed_base_marker = self._source.marker()
            log.exception("findings_matcher_rebuild_failed")
            return
        except Exception:  # the source failed: the next due poll starts another
            log.exception("findings_matcher_rebuild_failed")
            return
        try:
            with self._lock:
                self._install(base)
        except Exception:
            log.exception("findings_matcher_rebuild_failed")

    def _apply_changes(self, snapshot: Snapshot) -> bool:
        """Recompute the overlay of the base in service if the marker moved or an expiry passed."""
        now = self._now()
        marker = self._source.marker()
        expired = snapshot.next_expiry is not None and now >= snapshot.next_expiry
        if marker == snapshot.marker and not expired:
            return False
        if marker == self._failed_marker and not expired:
            return False
        try:
            self._swap(snapshot.base, marker, now)
        except Exception:
            self._failed_marker = marker
            raise
        self._failed_marker = None
        return True

    def _install(self, base: Base) -> None:
        """Swap in `base` with the overlay of every change since its `since` (unless a newer base serves)."""
        current = self._snapshot
        if current is not None and current.base.sequence > base.sequence:
            return  # a synchronous refresh installed a newer base meanwhile
        self._rules = {k: v for k, v in self._rules.items() if k not in base.statuses}
        now = self._now()
        self._swap(base, self._source.marker(), now)
        self._failed_base_marker = None

    def _swap(self, base: Base, marker: int, now: datetime) -> None:
        """Build the overlay of `base` from the source's current state; swap the snapshot.

        `marker` was read before the changes are: a change committed in between is both in
        this overlay and, as a marker change, in the next round (where it changes nothing).
        """
        started = time.monotonic()
        changes = self._source.changed_since(base.since)
        overrides: dict[str, str] = {}
        removed: set[str] = set()
        added: set[str] = set()
        for change in changes:
            fid = change.finding_id
            if fid in base.statuses:
                if not change.active_at(now):
                    removed.add(fid)
                elif change.status != base.statuses[fid]:
                    overrides[fid] = change.status
            elif change.active_at(now):
                added.add(fid)
                overrides[fid] = change.status
        removed.update(fid for fid, at in base.expiries.items() if at <= now)
        missing = [fid for fid in added if fid not in self._rules]
        if missing:
            for item in self._source.rules(missing, now):
                self._rules[item.rule.finding_id] = item
        added &= self._rules.keys()  # dismissed or expired between the two reads: not added
        previous = self._snapshot.overlay if self._snapshot is not None and self._snapshot.base is base else None
        if previous is not None and previous.added == added:
            matcher = previous.matcher  # statuses come from the overlay's map, not from the matcher
        elif added:
            matcher, kept = self._build([self._rules[fid].rule for fid in sorted(added)], what="overlay")
            added = {rule.finding_id for rule in kept}
        else:
            matcher = None
        expiries = {fid: at for fid in added if (at := self._rules[fid].expires_at) is not None}
        overlay = Overlay(
            matcher=matcher,
            added=frozenset(added),
            statuses={k: v for k, v in overrides.items() if k not in removed},
            removed=frozenset(removed),
            expiries=expiries,
        )
        future = [at for at in (*base.expiries.values(), *expiries.values()) if at > now]
        live_base = len(base.statuses) - len(removed & base.statuses.keys())
        self._snapshot = Snapshot(  # the swap: one reference assignment
            base=base,
            overlay=overlay,
            marker=marker,
            next_expiry=min(future, default=None),
            built_at=now,
            finding_count=live_base + len(added),
        )
        log.debug(
            "findings_overlay_applied",
            marker=marker,
            overlay_findings=overlay.size,
            overlay_patterns=overlay.pattern_count,
            apply_ms=int((time.monotonic() - started) * 1000),
        )

    def _build_base(self) -> Base:
        """Read the active set and build a full matcher: slow at scale, takes no lock itself."""
        sequence = next(self._sequence)
        point = self._now()  # before the marker and the active set: see the module docstring
        marker = self._source.marker()
        active = self._source.active(point)
        started = time.monotonic()
        matcher, kept = self._build([item.rule for item in active], what="base")
        if len(kept) != len(active):
            kept_ids = {rule.finding_id for rule in kept}
            active = [a for a in active if a.rule.finding_id in kept_ids]
        base = Base(
            matcher=matcher,
            statuses={a.rule.finding_id: a.rule.status for a in active},
            expiries={a.rule.finding_id: a.expires_at for a in active if a.expires_at is not None},
            point=point,
            since=point - self._margin,
            marker=marker,
            sequence=sequence,
            built_monotonic=time.monotonic(),
        )
        log.info(
            "findings_matcher_built",
            marker=marker,
            findings=len(active),
            patterns=matcher.pattern_count,
            build_ms=int((time.monotonic() - started) * 1000),
        )
        return base

    def _build(self, rules: list[FindingRule], *, what: str) -> tuple[Matcher, list[FindingRule]]:
        """Build `rules`; returns the matcher and the rules it indexes.

        A finding the matcher refuses is logged and left out: one bad finding must not stop
        every other change from reaching screening. Raises ValueError only for what no single
        finding causes (more than PATTERNS_MAX patterns in all).
        """
        try:
            return self._builder(rules), rules
        except ValueError:
            pass
        good: list[FindingRule] = []
        for rule in rules:
            try:
                self._builder([rule])
            except ValueError as exc:
                log.error("findings_matcher_rule_rejected", finding_id=rule.finding_id, tier=what, error=str(exc))
                continue
            good.append(rule)
        return self._builder(good), good
