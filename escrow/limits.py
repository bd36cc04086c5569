"""Named limits, in one place, so every loop, batch and retry has a visible bound."""

AMOUNT_MINOR_MAX = 10**15  # DESIGN §2: at most 10^15 minor units in any amount
POSTINGS_PER_ENTRY_MAX = 64  # a journal entry is a business event, not a bulk load
BATCH_ORDERS_MAX = 1_000  # POST /v1/orders:batch
REQUEST_BODY_BYTES_MAX = 16 * 1024 * 1024  # a full batch of the longest orders fits, even \u-escaped; more is 413
INTAKE_FAST_BODY_BYTES_MAX = 64 * 1024  # one order is a few hundred bytes; larger bodies take the route
LIST_LIMIT_MAX = 200  # ?limit= on every list
LIST_LIMIT_DEFAULT = 50
IDEMPOTENCY_KEY_CHARS_MAX = 255
IDEMPOTENCY_TTL_S = 24 * 3600  # DESIGN §5: keys are kept at least 24 hours
IDEMPOTENCY_LOCK_S = 60  # a claim older than this belongs to a crashed request
REQUEST_ID_CHARS_MAX = 128
REASON_CHARS_MAX = 2_000
AUDIT_SEAL_BATCH_MAX = 5_000  # records hashed per sealer transaction
EXPIRE_BATCH_MAX = 1_000  # holds ended per worker round
HOT_ACCOUNT_SHARDS = 64  # balance rows per platform-wide account (see escrow.ledger); the schema allows 64
LEDGER_RETRY_ATTEMPTS_MAX = 5  # deadlock / serialization retries of one transaction
INTAKE_COALESCE_MAX = 64  # passing orders one fast-lane statement records at most (see escrow.api.intake)
