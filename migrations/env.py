"""Alembic environment: the schema of escrow.persistence.tables on SQLite or PostgreSQL.

Types and server defaults are compared so that `alembic check` (run by the test suite)
catches any drift between the tables and the migrations.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from escrow.persistence.db import make_engine
from escrow.persistence.tables import metadata
from escrow.settings import Settings

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or Settings().database_url
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `escrow migrate`")
run_migrations_online()
