"""TRUNCATE of the ledger and the audit trail is refused at the database (PostgreSQL).

0001 refuses UPDATE and DELETE of journal entries, postings and sealed audit records with
row triggers, but TRUNCATE fires no row trigger: one statement could empty the books or
the trail. A statement trigger per table closes that, with the same function and message
(TG_OP names the operation). SQLite has no TRUNCATE; its DELETE is refused since 0001.

A superuser who really means to empty them (a test fixture, a restore) sets
`session_replication_role = replica` in that transaction, which is visible in its own logs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 16:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROTECTED = ("journal_entries", "postings", "audit_records")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in PROTECTED:
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION escrow_refuse_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in PROTECTED:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
