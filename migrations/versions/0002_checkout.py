"""checkout: orders, holds, sellers, events, payout accounts

Revision ID: 0002
Revises: 0001

The orders CHECK `escrowed + held + frozen + released + refunded = amount` makes the
database refuse any change that would create or lose money on an order.
Create Date: 2026-11-29 09:30:06.680969
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
        sa.UniqueConstraint("position", name=op.f("uq_events_position")),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(length=120), nullable=False),
        sa.Column("buyer_id", sa.String(length=120), nullable=False),
        sa.Column("seller_id", sa.String(length=120), nullable=False),
        sa.Column("listing_id", sa.String(length=120), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("payment_method", sa.String(length=16), nullable=False),
        sa.Column("payment_reference", sa.String(length=140), nullable=False),
        sa.Column("jurisdiction", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("escrowed", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("frozen", sa.BigInteger(), nullable=False),
        sa.Column("released", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.Column("screening", sa.JSON(), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("payment_method IN ('card', 'bank_transfer')", name=op.f("ck_orders_payment_method")),
        sa.CheckConstraint(
            "status IN ('escrowed', 'held', 'confirmed', 'refunded', 'closed')", name=op.f("ck_orders_status")
        ),
        sa.CheckConstraint("amount > 0 AND amount <= 1000000000000000", name=op.f("ck_orders_amount")),
        sa.CheckConstraint("escrowed + held + frozen + released + refunded = amount", name=op.f("ck_orders_conserved")),
        sa.CheckConstraint(
            "escrowed >= 0 AND held >= 0 AND frozen >= 0 AND released >= 0 AND refunded >= 0",
            name=op.f("ck_orders_parts_non_negative"),
        ),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_orders")),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orders_seller_id_confirmed_at"), ["seller_id", "confirmed_at"], unique=False
        )

    op.create_table(
        "payout_accounts",
        sa.Column("party_id", sa.String(length=200), nullable=False),
        sa.Column("holder_name", sa.String(length=140), nullable=False),
        sa.Column("iban_ciphertext", sa.Text(), nullable=False),
        sa.Column("iban_masked", sa.String(length=40), nullable=False),
        sa.Column("bic", sa.String(length=11), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("party_id", name=op.f("pk_payout_accounts")),
    )
    op.create_table(
        "sellers",
        sa.Column("seller_id", sa.String(length=120), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("frozen_reason", sa.Text(), nullable=True),
        sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seller_id", name=op.f("pk_sellers")),
    )
    op.create_table(
        "sequence_heads",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sequence_heads")),
    )
    op.execute("INSERT INTO sequence_heads (name, position) VALUES ('events', 0)")
    op.create_table(
        "holds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=120), nullable=False),
        sa.Column("seller_id", sa.String(length=120), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("original_amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("finding_ids", sa.JSON(), nullable=False),
        sa.Column("confirmed", sa.Boolean(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim_window_ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counter_notice", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(status IN ('active', 'contested')) = (amount > 0)", name=op.f("ck_holds_active_means_held")
        ),
        sa.CheckConstraint(
            "status IN ('active', 'contested', 'released', 'applied', 'expired')", name=op.f("ck_holds_status")
        ),
        sa.CheckConstraint(
            "amount >= 0 AND amount <= original_amount AND original_amount <= 1000000000000000",
            name=op.f("ck_holds_amount"),
        ),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"], name=op.f("fk_holds_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_holds_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_holds_seller_id_status"), ["seller_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_holds_status_expires_at"), ["status", "expires_at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_holds_status_expires_at"))
        batch_op.drop_index(batch_op.f("ix_holds_seller_id_status"))
        batch_op.drop_index(batch_op.f("ix_holds_order_id"))

    op.drop_table("holds")
    op.drop_table("sequence_heads")
    op.drop_table("sellers")
    op.drop_table("payout_accounts")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_seller_id_confirmed_at"))

    op.drop_table("orders")
    op.drop_table("events")
