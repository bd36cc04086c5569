"""The simulator's clock: wall time plus an offset, or a manual clock that only tests move.

Settlement delays, return delays and statement dates are all measured on this clock, so a
test moves time with `POST /control/clock` and then `POST /control/tick` instead of
sleeping. The clock never moves backwards: settlements already due would otherwise become
undue, and booked entries would predate their instruction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the simulator needs from a clock: read it and move it forward."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware UTC."""
        ...

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by `delta` (>= 0) and return the new time."""
        ...

    def set(self, now: datetime) -> datetime:
        """Jump to `now` (not earlier than the current time) and return it."""
        ...


class ClockError(ValueError):
    """A clock move that would go backwards or use a naive datetime."""


def wall_now() -> datetime:
    """Real UTC time; the default for webhook signature timestamps."""
    return datetime.now(UTC)


class SimClock:
    """A thread-safe clock, either following wall time with an offset or fully manual.

    `SimClock.manual(start)` stands still until moved, which makes tests deterministic;
    `SimClock.wall()` follows real time (for a standalone run with a background ticker) and
    can still be pushed forward by an offset.
    """

    def __init__(
        self,
        *,
        start: datetime | None = None,
        wall: Callable[[], datetime] = wall_now,
    ) -> None:
        if start is not None and start.tzinfo is None:
            raise ClockError("start must be timezone-aware")
        self._lock = threading.Lock()
        self._manual_now = start.astimezone(UTC) if start is not None else None
        self._wall = wall
        self._offset = timedelta(0)

    @classmethod
    def manual(cls, start: datetime) -> SimClock:
        """A clock fixed at `start` until `advance` or `set` moves it."""
        return cls(start=start)

    @classmethod
    def wall(cls) -> SimClock:
        """A clock following real UTC time, movable forward by an offset."""
        return cls()

    @property
    def is_manual(self) -> bool:
        """True when the clock only moves on request."""
        return self._manual_now is not None

    def now(self) -> datetime:
        """Return the current simulated time (UTC)."""
        with self._lock:
            return self._now_locked()

    def _now_locked(self) -> datetime:
        if self._manual_now is not None:
            return self._manual_now
        return self._wall().astimezone(UTC) + self._offset

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by `delta`; raises ClockError for a negative delta."""
        if delta < timedelta(0):
            raise ClockError("the clock cannot move backwards")
        with self._lock:
            if self._manual_now is not None:
                self._manual_now += delta
            else:
                self._offset += delta
            return self._now_locked()

    def set(self, now: datetime) -> datetime:
        """Jump to `now`; raises ClockError if it is naive or earlier than the current time."""
        if now.tzinfo is None:
            raise ClockError("now must be timezone-aware")
        target = now.astimezone(UTC)
        with self._lock:
            current = self._now_locked()
            if target < current:
                raise ClockError("the clock cannot move backwards")
            if self._manual_now is not None:
                self._manual_now = target
            else:
                self._offset += target - current
            return self._now_locked()

    def snapshot(self) -> dict[str, str | float]:
        """State to persist so a restarted simulator keeps its notion of time."""
        with self._lock:
            if self._manual_now is not None:
                return {"mode": "manual", "now": self._manual_now.isoformat()}
            return {"mode": "wall", "offset_s": self._offset.total_seconds()}

    def restore(self, snapshot: dict[str, str | float]) -> None:
        """Restore a `snapshot()`; a manual clock never moves backwards on restore."""
        with self._lock:
            if snapshot.get("mode") == "manual" and self._manual_now is not None:
                saved = datetime.fromisoformat(str(snapshot["now"]))
                self._manual_now = max(self._manual_now, saved)
            elif snapshot.get("mode") == "wall" and self._manual_now is None:
                self._offset = max(self._offset, timedelta(seconds=float(snapshot["offset_s"])))
