"""The schema, as SQLAlchemy Core tables.

Alembic migrations are the only way this schema reaches a database; a test compares these
tables with the migrated database so the two cannot drift. Constraint names come from one
naming convention so they are identical on SQLite and PostgreSQL, and the ledger can tell a
broken guard (`ck_ledger_balances_non_negative`) from any other integrity error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

AMOUNT_BOUND = "1000000000000000"  # AMOUNT_MINOR_MAX, spelled for SQL CHECKs
ROLES = ("checkout", "cp_agent", "cp_supervisor", "ip_staff", "finance", "legal", "rights_holder", "admin")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases.

    SQLite has no time zone type and hands back naive values; this makes every value that
    leaves the database aware and UTC, and refuses naive values going in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGSERIAL.
BigId = BigInteger().with_variant(Integer(), "sqlite")


journal_entries = Table(
    "journal_entries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # A reversal points at what it reverses; unique, so nothing is reversed twice.
    Column("reverses_id", String(40), ForeignKey("journal_entries.id"), nullable=True, unique=True),
    Column("request_id", String(128), nullable=True),
    Column("memo", Text(), nullable=True),
)

postings = Table(
    "postings",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("entry_id", String(40), ForeignKey("journal_entries.id"), nullable=False),
    Column("account", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    # Signed minor units: positive credits the account (money in), negative debits it.
    Column("amount", BigInteger(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"amount <> 0 AND amount BETWEEN -{AMOUNT_BOUND} AND {AMOUNT_BOUND}", name="amount"),
    Index(None, "account", "currency"),
    Index(None, "entry_id"),
)

# Materialized balances. An account has one row per (currency, shard); platform-wide accounts
# have several shards so that concurrent orders do not queue on one row. The balance of an
# account is the sum of its shards. Guarded accounts have exactly one shard, and the CHECK is
# the last line of defence behind the guarded UPDATE in escrow.ledger.
ledger_balances = Table(
    "ledger_balances",
    metadata,
    Column("account", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("shard", SmallInteger(), nullable=False),
    Column("balance", BigInteger(), nullable=False),
    Column("non_negative", Boolean(), nullable=False),
    PrimaryKeyConstraint("account", "currency", "shard"),
    CheckConstraint("NOT non_negative OR balance >= 0", name="non_negative"),
    CheckConstraint("shard >= 0 AND shard < 64", name="shard"),
    CheckConstraint("NOT non_negative OR shard = 0", name="guarded_single_shard"),
)

_UNSEALED = text("chain_pos IS NULL")
_UNPUBLISHED = text("position IS NULL")

audit_records = Table(
    "audit_records",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("action", String(64), nullable=False),
    Column("object_id", String(200), nullable=False),
    Column("reason", Text(), nullable=True),
    Column("request_id", String(128), nullable=True),
    Column("data", JSON(), nullable=False),
    # Set once by the sealer: the position in the chain, the previous hash and this hash.
    Column("chain_pos", BigInteger(), nullable=True, unique=True),
    Column("prev_hash", String(64), nullable=True),
    Column("hash", String(64), nullable=True),
    Index(None, "object_id"),
    # The sealer's queue: without it, finding the unsealed records scans every sealed one.
    Index("ix_audit_records_unsealed", "seq", postgresql_where=_UNSEALED, sqlite_where=_UNSEALED),
)

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", SmallInteger(), primary_key=True),
    Column("chain_pos", BigInteger(), nullable=False),
    Column("hash", String(64), nullable=False),
    CheckConstraint("id = 1", name="singleton"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("party_id", String(200), nullable=True),
    Column("digest", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    CheckConstraint("role IN (" + ", ".join(f"'{r}'" for r in ROLES) + ")", name="role"),
    CheckConstraint("(role = 'rights_holder') = (party_id IS NOT NULL)", name="party_scope"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("principal_id", String(40), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("lock_token", String(40), nullable=True),
    Column("locked_until", UTCDateTime(), nullable=True),
    Column("response_status", SmallInteger(), nullable=True),
    Column("response_body", Text(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("principal_id", "key"),
    CheckConstraint("state IN ('running', 'completed')", name="state"),
    Index(None, "expires_at"),
)


# --- checkout: orders, holds, sellers, the event feed ------------------------------------

ORDER_STATUSES = ("escrowed", "held", "confirmed", "refunded", "closed")
HOLD_STATUSES = ("active", "contested", "released", "applied", "expired")

# An order's money is always in exactly one of five places; the CHECK makes the database
# itself refuse any change that would create or lose a minor unit of an order.
orders = Table(
    "orders",
    metadata,
    Column("order_id", String(120), primary_key=True),
    Column("buyer_id", String(120), nullable=False),
    Column("seller_id", String(120), nullable=False),
    Column("listing_id", String(120), nullable=False),
    Column("title", Text(), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger(), nullable=False),
    Column("payment_method", String(16), nullable=False),
    Column("payment_reference", String(140), nullable=False),
    Column("jurisdiction", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("escrowed", BigInteger(), nullable=False),
    Column("held", BigInteger(), nullable=False),
    Column("frozen", BigInteger(), nullable=False),
    Column("released", BigInteger(), nullable=False),
    Column("refunded", BigInteger(), nullable=False),
    Column("screening", JSON(), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("confirmed_at", UTCDateTime(), nullable=True),
    CheckConstraint(f"amount > 0 AND amount <= {AMOUNT_BOUND}", name="amount"),
    CheckConstraint(
        "escrowed >= 0 AND held >= 0 AND frozen >= 0 AND released >= 0 AND refunded >= 0", name="parts_non_negative"
    ),
    CheckConstraint("escrowed + held + frozen + released + refunded = amount", name="conserved"),
    CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in ORDER_STATUSES) + ")", name="status"),
    CheckConstraint("payment_method IN ('card', 'bank_transfer')", name="payment_method"),
    Index(None, "seller_id", "confirmed_at"),
)

holds = Table(
    "holds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("order_id", String(120), ForeignKey("orders.order_id"), nullable=False),
    Column("seller_id", String(120), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger(), nullable=False),  # what the hold ties down now
    Column("original_amount", BigInteger(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("finding_ids", JSON(), nullable=False),
    Column("confirmed", Boolean(), nullable=False),  # its money sits in seller:frozen
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("max_expires_at", UTCDateTime(), nullable=False),  # the jurisdiction's cap, extensions included
    Column("claim_window_ends_at", UTCDateTime(), nullable=True),
    Column("counter_notice", Text(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"amount >= 0 AND amount <= original_amount AND original_amount <= {AMOUNT_BOUND}", name="amount"),
    CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in HOLD_STATUSES) + ")", name="status"),
    CheckConstraint("(status IN ('active', 'contested')) = (amount > 0)", name="active_means_held"),
    Index(None, "order_id"),
    Index(None, "seller_id", "status"),
    Index(None, "status", "expires_at"),
)

sellers = Table(
    "sellers",
    metadata,
    Column("seller_id", String(120), primary_key=True),
    Column("frozen", Boolean(), nullable=False),
    Column("frozen_reason", Text(), nullable=True),
    Column("frozen_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

# The feed's order is the order in which a publisher positions committed events (under
# the head row's lock), not the insert sequence: sequences commit out of order.
events = Table(
    "events",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("position", BigInteger(), nullable=True, unique=True),
    Column("type", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("data", JSON(), nullable=False),
    # The publisher's queue: without it, finding the unpositioned events scans every published one.
    Index("ix_events_unpublished", "seq", postgresql_where=_UNPUBLISHED, sqlite_where=_UNPUBLISHED),
)

sequence_heads = Table(
    "sequence_heads",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("position", BigInteger(), nullable=False),
)

# A rights holder's (or any party's) payout account. The IBAN is encrypted at rest;
# only its country code and last four characters are kept in clear, for display.
payout_accounts = Table(
    "payout_accounts",
    metadata,
    Column("party_id", String(200), primary_key=True),
    Column("holder_name", String(140), nullable=False),
    Column("iban_ciphertext", Text(), nullable=False),
    Column("iban_masked", String(40), nullable=False),
    Column("bic", String(11), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# --- findings ---

FINDING_KINDS = ("keyword", "seller", "listing")
FINDING_STATUSES = ("suspected", "confirmed", "dismissed")
FINDING_SEVERITIES = ("low", "medium", "high", "critical")

# What screening looks for. Patterns and ids are JSON lists: a finding is written once and
# read whole by the matcher registry, never searched by its values in SQL. An expired finding
# keeps its stored status; "expired" is derived from `expires_at` when it is read.
findings = Table(
    "findings",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("brand", String(200), nullable=False),
    Column("patterns", JSON(), nullable=False),
    Column("seller_ids", JSON(), nullable=False),
    Column("listing_ids", JSON(), nullable=False),
    Column("rights_holder_id", String(200), nullable=True),
    Column("jurisdiction", String(8), nullable=True),
    Column("severity", String(16), nullable=True),
    Column("evidence_url", String(2000), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in FINDING_KINDS) + ")", name="kind"),
    CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in FINDING_STATUSES) + ")", name="status"),
    CheckConstraint(
        "severity IS NULL OR severity IN (" + ", ".join(f"'{s}'" for s in FINDING_SEVERITIES) + ")", name="severity"
    ),
    Index(None, "status", "expires_at"),
    Index(None, "rights_holder_id"),
    Index(None, "updated_at"),  # the screening overlay reads "changed since" on every change
)

# One row, bumped in the same transaction as every change to `findings`: each API process
# polls it (a primary-key read) to learn, cheaply, that its matcher is out of date.
finding_revision = Table(
    "finding_revision",
    metadata,
    Column("id", SmallInteger(), primary_key=True),
    Column("revision", BigInteger(), nullable=False),
    CheckConstraint("id = 1", name="singleton"),
)


# --- outbox, payouts, webhooks ---

OUTBOX_RAILS = ("bank", "card")
OUTBOX_KINDS = ("payout", "refund")
# pending: due for delivery (or a resend after an unknown outcome); sent: the rail took it and
# its outcome is awaited (webhook, or a status poll when next_attempt_at comes); done: the
# outcome is recorded; dead: attempts exhausted or refused as malformed, a human must look.
OUTBOX_STATES = ("pending", "sent", "done", "dead")
PAYOUT_STATUSES = ("pending", "submitted", "paid", "failed", "returned")
ORDER_REFUND_STATUSES = ("submitted", "succeeded", "failed", "returned")

# One external instruction, written in the same transaction as the ledger entry that puts its
# money in transit. `key` is what the rail deduplicates on (EndToEndId, refund id), stable
# across every retry. A claim is a lease (`lease_token` until `leased_until`): a worker killed
# mid-delivery leaves a lease that simply runs out, and the next worker asks the rail by key.
outbox_instructions = Table(
    "outbox_instructions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("rail", String(8), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("key", String(140), nullable=False, unique=True),
    Column("object_id", String(40), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger(), nullable=False),
    Column("destination", JSON(), nullable=False),
    Column("state", String(8), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("lease_token", String(40), nullable=True),
    Column("leased_until", UTCDateTime(), nullable=True),
    Column("rail_state", String(16), nullable=True),
    Column("last_error", Text(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"amount > 0 AND amount <= {AMOUNT_BOUND}", name="amount"),
    CheckConstraint("attempts >= 0", name="attempts"),
    CheckConstraint("rail IN (" + ", ".join(f"'{r}'" for r in OUTBOX_RAILS) + ")", name="rail"),
    CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in OUTBOX_KINDS) + ")", name="kind"),
    CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in OUTBOX_STATES) + ")", name="state"),
    Index(None, "state", "next_attempt_at"),
    Index(None, "object_id"),
)

payouts = Table(
    "payouts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("party_id", String(200), nullable=False),
    Column("seller_id", String(120), nullable=True),  # set when the money came from a seller
    Column("source_account", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("end_to_end_id", String(35), nullable=False, unique=True),
    Column("booked", Boolean(), nullable=False),
    Column("iban_masked", String(40), nullable=False),
    Column("failure_reason", Text(), nullable=True),
    Column("retry_of", String(40), nullable=True, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"amount > 0 AND amount <= {AMOUNT_BOUND}", name="amount"),
    CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in PAYOUT_STATUSES) + ")", name="status"),
    Index(None, "party_id", "status"),
    Index(None, "status"),
)

# Ordinary refunds (DESIGN §2 flow 5) as delivered through the outbox.
order_refunds = Table(
    "order_refunds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("order_id", String(120), ForeignKey("orders.order_id"), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger(), nullable=False),
    Column("method", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("booked", Boolean(), nullable=False),
    Column("failure_reason", Text(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"amount > 0 AND amount <= {AMOUNT_BOUND}", name="amount"),
    CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in ORDER_REFUND_STATUSES) + ")", name="status"),
    Index(None, "order_id"),
)

# One row per processed callback: a repeated `webhook-id` finds its row and is ignored.
webhook_receipts = Table(
    "webhook_receipts",
    metadata,
    Column("adapter", String(8), nullable=False),
    Column("webhook_id", String(255), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("events", Integer(), nullable=False),
    PrimaryKeyConstraint("adapter", "webhook_id"),
)


# --- refund-first ---

# Advance refunds (DESIGN §2 flows 6, 7; §3): the platform's guarantee fund pays the buyer
# and a receivable `seller:{id}:owed` opens for the same amount. `status` is the payment's
# lifecycle, `recovery_status` the receivable's: `none` before any money left (pending or
# rejected), `outstanding` → `recovered` | `written_off`, `cancelled` when the payment failed
# (the receivable is reversed with it). `recovered` and `written_off` count the current
# attempt only; a retry after a failure opens a new receivable and a new outbox key.
ADVANCE_REFUND_STATUSES = ("pending_approval", "submitted", "succeeded", "failed", "rejected")
RECOVERY_STATUSES = ("none", "outstanding", "recovered", "written_off", "cancelled")
RECOVERY_SOURCES = ("order_held", "frozen", "payable", "deposit", "confiscation")

advance_refunds = Table(
    "advance_refunds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("order_id", String(120), ForeignKey("orders.order_id"), nullable=False),
    Column("seller_id", String(120), nullable=False),
    Column("buyer_id", String(120), nullable=False),
    Column("jurisdiction", String(8), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("approval_required", Boolean(), nullable=False),
    Column("requested_by", String(64), nullable=False),
    Column("decided_by", String(64), nullable=True),  # the approving or rejecting supervisor
    Column("decision_reason", Text(), nullable=True),
    Column("attempt", Integer(), nullable=False),  # 0 until submitted; +1 per submission
    Column("rail", String(8), nullable=True),
    Column("destination", JSON(), nullable=True),
    Column("instruction_key", String(140), nullable=True),
    Column("entry_id", String(40), nullable=True),  # the submission entry of the current attempt
    Column("failure_reason", Text(), nullable=True),
    Column("recovery_status", String(16), nullable=False),
    Column("recovered", BigInteger(), nullable=False),
    Column("written_off", BigInteger(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"amount > 0 AND amount <= {AMOUNT_BOUND}", name="amount"),
    CheckConstraint("recovered >= 0 AND written_off >= 0 AND recovered + written_off <= amount", name="recovery"),
    CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in ADVANCE_REFUND_STATUSES) + ")", name="status"),
    CheckConstraint(
        "recovery_status IN (" + ", ".join(f"'{s}'" for s in RECOVERY_STATUSES) + ")", name="recovery_status"
    ),
    CheckConstraint("attempt >= 0", name="attempt"),
    Index(None, "order_id"),
    Index(None, "seller_id", "recovery_status"),
    Index(None, "status"),
)

# One row per recovery step: money of the seller that paid off part of a receivable.
# `undone` is set when the advance refund failed and the step was given back to its source.
advance_recoveries = Table(
    "advance_recoveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("refund_id", String(40), ForeignKey("advance_refunds.id"), nullable=False),
    Column("position", Integer(), nullable=False),  # 1, 2, … per refund, in the order the steps were taken
    Column("attempt", Integer(), nullable=False),
    Column("seller_id", String(120), nullable=False),
    Column("order_id", String(120), nullable=True),  # set for `order_held`
    Column("source", String(16), nullable=False),
    Column("source_account", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger(), nullable=False),
    Column("entry_id", String(40), nullable=False),
    Column("undone", Boolean(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"amount > 0 AND amount <= {AMOUNT_BOUND}", name="amount"),
    CheckConstraint("source IN (" + ", ".join(f"'{s}'" for s in RECOVERY_SOURCES) + ")", name="source"),
    Index(None, "refund_id", "position", unique=True),
    Index(None, "order_id"),
)

# Strike points (DESIGN §3 Seller): each penalty is a strike and deducts points; the
# points of a calendar year (UTC) start again at the policy's `points_per_year`.
seller_penalties = Table(
    "seller_penalties",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("seller_id", String(120), nullable=False),
    Column("year", Integer(), nullable=False),
    Column("points", Integer(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("finding_id", String(40), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint("points > 0 AND points <= 1000", name="points"),
    Index(None, "seller_id", "year"),
)
