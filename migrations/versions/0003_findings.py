"""findings, and the revision counter the matcher registry polls

Revision ID: 0003
Revises: 0002

`finding_revision` has exactly one row, bumped with every change to `findings`, so each API
process learns with one primary-key read that its matcher is stale.
Create Date: 2026-11-29 09:32:39.830492
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "finding_revision",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_finding_revision_singleton")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finding_revision")),
    )
    op.execute("INSERT INTO finding_revision (id, revision) VALUES (1, 0)")
    op.create_table(
        "findings",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("brand", sa.String(length=200), nullable=False),
        sa.Column("patterns", sa.JSON(), nullable=False),
        sa.Column("seller_ids", sa.JSON(), nullable=False),
        sa.Column("listing_ids", sa.JSON(), nullable=False),
        sa.Column("rights_holder_id", sa.String(length=200), nullable=True),
        sa.Column("jurisdiction", sa.String(length=8), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=True),
        sa.Column("evidence_url", sa.String(length=2000), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('keyword', 'seller', 'listing')", name=op.f("ck_findings_kind")),
        sa.CheckConstraint(
            "severity IS NULL OR severity IN ('low', 'medium', 'high', 'critical')", name=op.f("ck_findings_severity")
        ),
        sa.CheckConstraint("status IN ('suspected', 'confirmed', 'dismissed')", name=op.f("ck_findings_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_findings_rights_holder_id"), ["rights_holder_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_findings_status_expires_at"), ["status", "expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_findings_status_expires_at"))
        batch_op.drop_index(batch_op.f("ix_findings_rights_holder_id"))

    op.drop_table("findings")
    op.drop_table("finding_revision")
