"""Test databases: every storage test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from ESCROW_TEST_POSTGRES_URL, or a local server on 127.0.0.1:5432 if one
answers; without either, its tests are skipped — unless ESCROW_TEST_REQUIRE_POSTGRES=1
(set by .ci/run), which turns that into a failure. Both schemas come from `alembic upgrade
head`. Each test starts from an empty database: SQLite gets a copy of a migrated file,
PostgreSQL a TRUNCATE of every table (row triggers do not fire on TRUNCATE, so the
append-only rules stay in force for everything the test itself does).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from escrow.audit import GENESIS_HASH
from escrow.persistence import migrate
from escrow.persistence.db import make_engine
from escrow.persistence.tables import metadata

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
_postgres_tests: set[str] = set()


def _pg_base_url() -> str | None:
    url = os.environ.get("ESCROW_TEST_POSTGRES_URL") or DEFAULT_PG
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error:
        return None
    return url


def pytest_sessionstart(session: pytest.Session) -> None:
    """With ESCROW_TEST_REQUIRE_POSTGRES=1 (CI), an unreachable PostgreSQL stops the run before any test."""
    if os.environ.get("ESCROW_TEST_REQUIRE_POSTGRES") == "1" and _pg_base_url() is None:
        url = os.environ.get("ESCROW_TEST_POSTGRES_URL") or DEFAULT_PG
        pytest.exit(f"PostgreSQL required but unreachable at {url}", returncode=3)


def _with_database(url: str, name: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{name}"


@dataclass
class PostgresServer:
    admin_url: str

    def create_database(self, prefix: str = "escrow_test") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return _with_database(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        name = url.rpartition("/")[2]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer | None:
    url = _pg_base_url()
    return PostgresServer(url) if url else None


@pytest.fixture(scope="session")
def pg_url(postgres_server: PostgresServer | None) -> Iterator[str]:
    if postgres_server is None:
        pytest.skip("no PostgreSQL (set ESCROW_TEST_POSTGRES_URL)")
    url = postgres_server.create_database()
    migrate.upgrade(url)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@dataclass
class TestDB:
    """One empty, migrated database for one test."""

    __test__ = False
    kind: str
    url: str
    engine: Engine
    reset: Callable[[], None]

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())

    def counts(self) -> dict[str, int]:
        return {
            t: self.count(t)
            for t in ("journal_entries", "postings", "ledger_balances", "audit_records", "idempotency_keys", "api_keys")
        }


def _truncate_all(engine: Engine) -> None:
    tables = ", ".join(t.name for t in metadata.sorted_tables)
    with engine.begin() as conn:
        # The ledger and audit tables refuse TRUNCATE (migration 0008) unless triggers are
        # switched off for this transaction, which only a superuser can do.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(text("INSERT INTO audit_chain_head (id, chain_pos, hash) VALUES (1, 0, :h)"), {"h": GENESIS_HASH})
        conn.execute(text("INSERT INTO sequence_heads (name, position) VALUES ('events', 0)"))
        conn.execute(text("INSERT INTO finding_revision (id, revision) VALUES (1, 0)"))


def _sqlite_db(template: Path, tmp_path: Path) -> TestDB:
    path = tmp_path / f"escrow-{secrets.token_hex(3)}.db"
    shutil.copyfile(template, path)
    url = f"sqlite:///{path}"
    engine = make_engine(url, pool_size=20)

    def reset() -> None:
        engine.dispose()
        shutil.copyfile(template, path)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    return TestDB("sqlite", url, engine, reset)


def _postgres_db(url: str, request: pytest.FixtureRequest) -> TestDB:
    _postgres_tests.add(request.node.nodeid)
    engine = make_engine(url, pool_size=20)
    _truncate_all(engine)
    return TestDB("postgres", url, engine, lambda: _truncate_all(engine))


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path) -> Iterator[TestDB]:
    """An empty migrated database, once per backend."""
    if request.param == "sqlite":
        database = _sqlite_db(sqlite_template, tmp_path)
    else:
        database = _postgres_db(request.getfixturevalue("pg_url"), request)
    yield database
    database.engine.dispose()


@pytest.fixture
def pg_db(request: pytest.FixtureRequest) -> Iterator[TestDB]:
    """PostgreSQL only: for tests of real concurrency."""
    database = _postgres_db(request.getfixturevalue("pg_url"), request)
    yield database
    database.engine.dispose()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    passed = {r.nodeid for r in terminalreporter.stats.get("passed", [])}
    ran = len(_postgres_tests & passed)
    terminalreporter.write_line(f"postgresql tests passed: {ran}")


@pytest.fixture
def now() -> datetime:
    return datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
