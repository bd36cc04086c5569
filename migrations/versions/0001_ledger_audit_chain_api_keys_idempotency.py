"""Ledger, audit chain, API keys, idempotency keys.

Append-only rules are enforced by the database itself (triggers), so neither a bug in the
service nor a hand-typed UPDATE can rewrite a posted entry or a sealed audit record.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 09:10:20.077103
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64
APPEND_ONLY = ("journal_entries", "postings")
# What the sealer may fill in once; every other column of an audit record is fixed at insert.
AUDIT_CONTENT = (
    "seq",
    "occurred_at",
    "actor",
    "role",
    "action",
    "object_id",
    "reason",
    "request_id",
)


def _triggers(dialect: str) -> list[str]:
    if dialect == "postgresql":
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in AUDIT_CONTENT)
        statements = [
            """CREATE FUNCTION escrow_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION 'append-only table %: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'integrity_constraint_violation';
            END $$""",
            f"""CREATE FUNCTION escrow_audit_seal_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP = 'DELETE' OR OLD.hash IS NOT NULL OR {changed}
                 OR NEW.data::text IS DISTINCT FROM OLD.data::text THEN
                RAISE EXCEPTION 'audit record %: only sealing an unsealed record is allowed', OLD.seq
                  USING ERRCODE = 'integrity_constraint_violation';
              END IF;
              RETURN NEW;
            END $$""",
            """CREATE TRIGGER audit_records_seal_once BEFORE UPDATE OR DELETE ON audit_records
               FOR EACH ROW EXECUTE FUNCTION escrow_audit_seal_once()""",
        ]
        statements += [
            f"""CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t}
               FOR EACH ROW EXECUTE FUNCTION escrow_refuse_change()"""
            for t in APPEND_ONLY
        ]
        return statements
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in (*AUDIT_CONTENT, "data"))
    statements = []
    for t in APPEND_ONLY:
        for op_name in ("UPDATE", "DELETE"):
            statements.append(
                f"CREATE TRIGGER {t}_no_{op_name.lower()} BEFORE {op_name} ON {t} BEGIN "
                f"SELECT RAISE(ABORT, 'append-only table {t}: {op_name} refused'); END"
            )
    statements.append(
        "CREATE TRIGGER audit_records_seal_once BEFORE UPDATE ON audit_records "
        f"WHEN OLD.hash IS NOT NULL OR {changed} BEGIN "
        "SELECT RAISE(ABORT, 'audit record: only sealing an unsealed record is allowed'); END"
    )
    statements.append(
        "CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records BEGIN "
        "SELECT RAISE(ABORT, 'audit record: DELETE refused'); END"
    )
    return statements


def _drop_triggers(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return [
            *(f"DROP TRIGGER {t}_append_only ON {t}" for t in APPEND_ONLY),
            "DROP TRIGGER audit_records_seal_once ON audit_records",
            "DROP FUNCTION escrow_audit_seal_once()",
            "DROP FUNCTION escrow_refuse_change()",
        ]
    names = [f"{t}_no_{o}" for t in APPEND_ONLY for o in ("update", "delete")]
    return [f"DROP TRIGGER {n}" for n in (*names, "audit_records_seal_once", "audit_records_no_delete")]


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("party_id", sa.String(length=200), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(role = 'rights_holder') = (party_id IS NOT NULL)",
            name=op.f("ck_api_keys_party_scope"),
        ),
        sa.CheckConstraint(
            "role IN ('checkout', 'cp_agent', 'cp_supervisor', 'ip_staff', "
            "'finance', 'legal', 'rights_holder', 'admin')",
            name=op.f("ck_api_keys_role"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("chain_pos", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_chain_head_singleton")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "audit_records",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("object_id", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("chain_pos", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_records")),
        sa.UniqueConstraint("chain_pos", name=op.f("uq_audit_records_chain_pos")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_records_object_id"), ["object_id"], unique=False)

    op.create_table(
        "idempotency_keys",
        sa.Column("principal_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("lock_token", sa.String(length=40), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response_status", sa.SmallInteger(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('running', 'completed')", name=op.f("ck_idempotency_keys_state")),
        sa.PrimaryKeyConstraint("principal_id", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_idempotency_keys_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "journal_entries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reverses_id", sa.String(length=40), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("memo", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["journal_entries.id"],
            name=op.f("fk_journal_entries_reverses_id_journal_entries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_entries")),
        sa.UniqueConstraint("reverses_id", name=op.f("uq_journal_entries_reverses_id")),
    )
    op.create_table(
        "ledger_balances",
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("non_negative", sa.Boolean(), nullable=False),
        sa.CheckConstraint("NOT non_negative OR balance >= 0", name=op.f("ck_ledger_balances_non_negative")),
        sa.CheckConstraint("NOT non_negative OR shard = 0", name=op.f("ck_ledger_balances_guarded_single_shard")),
        sa.CheckConstraint("shard >= 0 AND shard < 64", name=op.f("ck_ledger_balances_shard")),
        sa.PrimaryKeyConstraint("account", "currency", "shard", name=op.f("pk_ledger_balances")),
    )
    op.create_table(
        "postings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("entry_id", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "amount <> 0 AND amount BETWEEN -1000000000000000 AND 1000000000000000",
            name=op.f("ck_postings_amount"),
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["journal_entries.id"], name=op.f("fk_postings_entry_id_journal_entries")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postings")),
    )
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_postings_account_currency"), ["account", "currency"], unique=False)
        batch_op.create_index(batch_op.f("ix_postings_entry_id"), ["entry_id"], unique=False)

    op.execute(
        sa.text("INSERT INTO audit_chain_head (id, chain_pos, hash) VALUES (1, 0, :genesis)").bindparams(
            genesis=GENESIS_HASH
        )
    )
    for statement in _triggers(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in _drop_triggers(op.get_bind().dialect.name):
        op.execute(statement)
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_postings_entry_id"))
        batch_op.drop_index(batch_op.f("ix_postings_account_currency"))

    op.drop_table("postings")
    op.drop_table("ledger_balances")
    op.drop_table("journal_entries")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_expires_at"))

    op.drop_table("idempotency_keys")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_records_object_id"))

    op.drop_table("audit_records")
    op.drop_table("audit_chain_head")
    op.drop_table("api_keys")
