"""Autocommit asyncio connections to PostgreSQL, for requests that are one statement.

Why: the checkout's order intake is one data-modifying statement (see
`escrow.service.orders.intake_statement`). Run through the thread pool and SQLAlchemy, the
hop to a worker thread and back, the pool checkout and the BEGIN/COMMIT cost more CPU on a
small machine than the statement itself. Awaited on the event loop over a connection in
autocommit mode, the statement is the whole transaction and the only round trip.

The driver here is asyncpg, not psycopg (which SQLAlchemy uses everywhere else): for the
intake statement psycopg's asyncio path cost ~190 us of client CPU a statement on two
cores, asyncpg ~105 us (its protocol is compiled; psycopg's waits go through Python
generators and two reader registrations per statement). Statements keep psycopg's `%s`
placeholders, so the same text runs through either driver; they are renumbered once per text.

This is deliberately not a general pool: it is an opportunistic fast lane beside the
SQLAlchemy engine, which stays the one way to run transactions. It never waits for a
connection: when all `size` connections are busy, `acquire` answers None (`execute`,
NO_CONNECTION) and the caller queues or takes the ordinary path (intake queues: see
`escrow.api.intake.Coalescer`). A connection that fails in any way is closed and dropped,
and StatementFailed is raised for the caller to fall back on, so a restarted server costs
one fallback per stale connection, never a wrong answer.

An asyncpg connection belongs to the event loop that opened it. Idle connections are kept
with their loop and handed out only on it, so one instance serves uvicorn's single loop and
a test client's loop per request alike; those of a loop that has ended are dropped.
"""

from __future__ import annotations

import asyncio
import re
import threading
from functools import lru_cache
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]  # no type hints shipped
from sqlalchemy.engine import URL

NO_CONNECTION: Final = object()
"""What `execute` answers when every connection is busy."""

_PLACEHOLDER = re.compile(r"%[s%]|%")


class StatementFailed(Exception):
    """The statement may or may not have run: the connection or the statement failed."""


class SingleStatements:
    """At most `size` autocommit connections to the database at `url` (a SQLAlchemy URL)."""

    def __init__(self, url: URL, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._size = size
        self._idle: list[tuple[asyncio.AbstractEventLoop, asyncpg.Connection]] = []
        self._open = 0  # idle plus in use
        self._lock = threading.Lock()  # loops of a test client run on threads of their own
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    async def execute(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | object | None:
        """The first row `sql` returns (None if none), or NO_CONNECTION; raises StatementFailed."""
        conn = await self.acquire()
        if conn is None:
            return NO_CONNECTION
        rows = await self.fetch(conn, sql, params)
        self.release(conn)
        return rows[0] if rows else None

    async def acquire(self) -> asyncpg.Connection | None:
        """An idle connection of this loop, or a new one; None when all `size` are open.

        Hand it back with `release` once its statements are done; `fetch` closes it on failure.
        """
        loop = asyncio.get_running_loop()
        conn = self._take(loop)
        if conn is not None:
            return conn
        if not self._reserve():
            return None
        try:
            return await asyncpg.connect(self._dsn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._unreserve()
            raise StatementFailed(f"cannot connect: {type(exc).__name__}") from exc
        except BaseException:
            self._unreserve()
            raise

    async def fetch(self, conn: asyncpg.Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Every row of `sql` on `conn`. On any failure `conn` is closed and its slot freed:
        do not release it. Every error but cancellation is raised as StatementFailed."""
        try:
            rows = await conn.fetch(numbered(sql), *params)
        except BaseException as exc:
            await self._discard(conn)
            if isinstance(exc, Exception):
                # The type only: a database message may quote the statement's values.
                raise StatementFailed(type(exc).__name__) from exc
            raise
        return [tuple(row) for row in rows]

    def release(self, conn: asyncpg.Connection) -> None:
        """Hand back a connection from `acquire`, for the next statement on its loop; one the
        server closed meanwhile (a restart, an idle kill) only frees its slot."""
        if conn.is_closed():
            self._unreserve()
            return
        self._give_back(asyncio.get_running_loop(), conn)

    async def aclose(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle = self._idle[:]
            self._idle.clear()
        here = asyncio.get_running_loop()
        for loop, conn in idle:
            if loop is here:
                await self._discard(conn)
            else:
                self._drop(conn)

    def _take(self, loop: asyncio.AbstractEventLoop) -> asyncpg.Connection | None:
        dead: list[asyncpg.Connection] = []
        found = None
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):  # the most recently used first: its statements are prepared
                owner, conn = self._idle[i]
                if owner.is_closed() or conn.is_closed():
                    del self._idle[i]
                    dead.append(conn)
                elif owner is loop:
                    del self._idle[i]
                    found = conn
                    break
        for conn in dead:
            self._drop(conn)
        return found

    def _reserve(self) -> bool:
        with self._lock:
            if self._closed or self._open >= self._size:
                return False
            self._open += 1
            return True

    def _unreserve(self) -> None:
        with self._lock:
            self._open -= 1

    def _give_back(self, loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((loop, conn))
                return
        self._drop(conn)  # closed meanwhile (shutdown)

    async def _discard(self, conn: asyncpg.Connection) -> None:
        self._unreserve()
        try:
            await conn.close(timeout=1)
        except Exception:  # already broken: nothing more to release
            conn.terminate()

    def _drop(self, conn: asyncpg.Connection) -> None:
        """Forget a connection without its loop (ended, or another thread's): close the socket."""
        self._unreserve()
        try:
            conn.terminate()
        except RuntimeError:  # its loop is closed; the socket closes when the object is freed
            return


@lru_cache(maxsize=64)
def numbered(sql: str) -> str:
    """`sql` with psycopg's `%s` placeholders as asyncpg's `$1, $2, …` (and `%%` as `%`)."""
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if match.group() == "%%":
            return "%"
        if match.group() == "%":
            raise ValueError(f"a lone % in a statement: write %% for a literal one: {sql[:80]!r}")
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(replace, sql)
