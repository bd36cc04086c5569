"""Partial indexes on the records the sealer and the publisher have yet to process.

`audit.seal` asks for the oldest unsealed audit records and `events.publish` for the oldest
unpositioned events, several times a second. Ordered by `seq` and filtered on a NULL
column, both walked the primary key past every record already done: their cost grew with
the table, and intake slowed down as the tables filled. An index of only the pending rows
keeps both queries proportional to the backlog.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 11:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNSEALED = sa.text("chain_pos IS NULL")
_UNPUBLISHED = sa.text("position IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_audit_records_unsealed", "audit_records", ["seq"], postgresql_where=_UNSEALED, sqlite_where=_UNSEALED
    )
    op.create_index(
        "ix_events_unpublished", "events", ["seq"], postgresql_where=_UNPUBLISHED, sqlite_where=_UNPUBLISHED
    )


def downgrade() -> None:
    op.drop_index("ix_events_unpublished", table_name="events")
    op.drop_index("ix_audit_records_unsealed", table_name="audit_records")
