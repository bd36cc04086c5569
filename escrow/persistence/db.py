"""Engines and transactions for SQLite (embedded) and PostgreSQL (production).

Concurrency control must hold on both. PostgreSQL runs READ COMMITTED and relies on row
locks taken by guarded UPDATEs. SQLite allows one writer: every transaction starts with
BEGIN IMMEDIATE, so a writer takes the lock up front instead of failing on upgrade halfway,
and WAL lets readers proceed meanwhile.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError

from escrow.limits import LEDGER_RETRY_ATTEMPTS_MAX

T = TypeVar("T")
log = structlog.get_logger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# SQLSTATEs after which the whole transaction may simply be run again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs (SQLAlchemy would pick psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def dumps_json(value: Any) -> str:
    """JSON columns: RFC 3339 UTC timestamps, the same bytes on both databases."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC).decode()


def make_engine(url: str, *, pool_size: int = 20) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
            json_serializer=dumps_json,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        json_serializer=dumps_json,
        # Plain READ COMMITTED: guards are row-locking conditional UPDATEs, not snapshots.
        isolation_level="READ COMMITTED",
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Straight to the driver: this runs once per transaction on the hot path.
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]


def is_retryable(exc: BaseException) -> bool:
    """True for deadlocks and serialization failures, which a rerun of the transaction cures.

    Looks through SQLAlchemy's wrapper: the ledger's hot path raises driver errors directly.
    """
    raw = exc.orig if isinstance(exc, DBAPIError) else exc
    if getattr(raw, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    return isinstance(raw, sqlite3.OperationalError) and "database is locked" in str(raw)


def transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run `work` in one transaction, rerunning it after a deadlock or serialization failure.

    `work` must only touch the database: it may run more than once, and only the last run
    commits. Bounded by LEDGER_RETRY_ATTEMPTS_MAX with jittered backoff.
    """
    for attempt in range(1, LEDGER_RETRY_ATTEMPTS_MAX + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except Exception as exc:
            if attempt == LEDGER_RETRY_ATTEMPTS_MAX or not is_retryable(exc):
                raise
            log.warning("transaction_retried", attempt=attempt, error=type(exc).__name__)
            time.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311  # jitter, not crypto
    raise AssertionError("unreachable")  # pragma: no cover
