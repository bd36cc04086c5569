"""The schema reaches a database only through Alembic, and the two never drift."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from escrow.persistence import migrate
from escrow.persistence.db import make_engine
from escrow.persistence.tables import metadata
from tests.conftest import PostgresServer


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new, empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    server: PostgresServer | None = request.getfixturevalue("postgres_server")
    if server is None:
        pytest.skip("no PostgreSQL")
    from tests.conftest import _postgres_tests

    _postgres_tests.add(request.node.nodeid)
    url = server.create_database("escrow_migrations")
    yield url
    server.drop_database(url)


def diff(url: str) -> list[object]:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = make_engine(url, pool_size=1)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_matches_the_models(empty_url: str) -> None:
    """An empty database upgraded to head has exactly the tables the code declares."""
    migrate.upgrade(empty_url)
    assert diff(empty_url) == []
    assert tables(empty_url) == {t.name for t in metadata.sorted_tables} | {"alembic_version"}


def test_downgrade_and_upgrade_round_trip(empty_url: str) -> None:
    """Downgrading to base removes everything; upgrading again restores the same schema."""
    migrate.upgrade(empty_url)
    migrate.downgrade(empty_url, "base")
    assert tables(empty_url) <= {"alembic_version"}
    migrate.upgrade(empty_url)
    assert diff(empty_url) == []
