"""Engines and their pools (escrow.persistence.db)."""

from __future__ import annotations

from typing import Any

from escrow.persistence.db import make_engine, single_statement
from tests.conftest import TestDB


def _one(dbapi_conn: Any) -> int:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("SELECT 1")
        return int(cur.fetchone()[0])
    finally:
        cur.close()


def test_autocommit_pool_outlives_dispose(pg_db: TestDB) -> None:
    """Disposing an engine disposes its autocommit sibling's pool, and the sibling serves on.

    The prefork master reads through the sibling and disposes its engine about once a
    second; a sibling made anew each time left one more dispose listener on the engine each
    time, without bound.
    """
    engine = make_engine(pg_db.url)
    try:
        for _ in range(5):
            assert single_statement(engine, _one) == 1
            engine.dispose()
        assert len(list(engine.dispatch.engine_disposed)) == 1
        assert single_statement(engine, _one) == 1
    finally:
        engine.dispose()
