"""Autocommit asyncio connections to PostgreSQL, for requests that are one statement.

Why: the checkout's order intake is one data-modifying statement (see
`escrow.service.orders.intake_statement`). Run through the thread pool and SQLAlchemy, the
hop to a worker thread and back, the pool checkout and the BEGIN/COMMIT cost more CPU on a
small machine than the statement itself. Awaited on the event loop over a connection in
autocommit mode, the statement is the whole transaction and the only round trip.

This is deliberately not a general pool: it is an opportunistic fast lane beside the
SQLAlchemy engine, which stays the one way to run transactions. It never waits for a
connection: when all `size` connections are busy, `execute` answers NO_CONNECTION and the
caller takes the ordinary path. A connection that fails in any way is closed and dropped,
and the error is raised for the caller to fall back on, so a restarted server costs one
fallback per stale connection, never a wrong answer.

It keeps no asyncio object of its own (a lock or a queue would belong to one event loop),
so one instance serves any loop: uvicorn's, or each of a test client's.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Final

import psycopg
from sqlalchemy.engine import URL

NO_CONNECTION: Final = object()
"""What `execute` answers when every connection is busy."""


class SingleStatements:
    """At most `size` autocommit connections to the database at `url` (a SQLAlchemy URL)."""

    def __init__(self, url: URL, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._size = size
        self._idle: deque[psycopg.AsyncConnection[Any]] = deque()
        self._open = 0  # idle plus in use
        self._lock = threading.Lock()  # loops of a test client run on threads of their own
        self._closed = False

    async def execute(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | object | None:
        """The first row `sql` returns (None if none), or NO_CONNECTION; raises psycopg.Error."""
        conn = self._take()
        if conn is None:
            if not self._reserve():
                return NO_CONNECTION
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except BaseException:
                self._unreserve()
                raise
        try:
            cursor = await conn.execute(sql, params)
            row = await cursor.fetchone()
        except BaseException:
            await self._discard(conn)
            raise
        self._give_back(conn)
        return row

    async def aclose(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
        for conn in idle:
            await self._discard(conn)

    def _take(self) -> psycopg.AsyncConnection[Any] | None:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()  # the most recently used: its prepared statements are warm
                if not conn.closed:
                    return conn
                self._open -= 1
        return None

    def _reserve(self) -> bool:
        with self._lock:
            if self._closed or self._open >= self._size:
                return False
            self._open += 1
            return True

    def _unreserve(self) -> None:
        with self._lock:
            self._open -= 1

    def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        self._unreserve()
        # Closed meanwhile (shutdown): drop it; the socket closes when the object is freed.
        conn.pgconn.finish()

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._unreserve()
        try:
            await conn.close()
        except psycopg.Error:  # already broken: nothing more to release
            return
