"""The simulator's books: every record it keeps, as pydantic models so they persist as JSON.

Everything lives in one `SimState`, guarded by the simulator's lock. When a state file is
configured, the whole state is written atomically (temporary file + `os.replace`) after
every change, so a harness that kills and restarts the simulator finds the same books and
the same pending callbacks; without a file the books are in memory only.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

TransferStatus = Literal["ACSP", "ACSC", "RJCT"]
RefundStatus = Literal["pending", "succeeded", "failed"]


class Transfer(BaseModel):
    """One credit transfer instruction as the bank received it, keyed by EndToEndId."""

    end_to_end_id: str
    fingerprint: str
    status: TransferStatus
    amount_text: str
    amount_minor: int | None  # None when the instructed amount could not be read
    currency: str
    creditor_name: str
    creditor_iban: str
    creditor_bic: str | None
    remittance: str
    debtor_name: str
    debtor_iban: str
    debtor_bic: str | None
    msg_id: str
    pmt_inf_id: str
    schema_name: str
    reason_code: str | None = None
    reason_info: str | None = None
    received_at: datetime
    settle_at: datetime | None = None
    booked_at: datetime | None = None
    entry_ref: str | None = None
    return_at: datetime | None = None
    returned_at: datetime | None = None
    return_reason: str | None = None
    return_info: str | None = None
    return_entry_ref: str | None = None
    magic: int | None = None
    requests: int = 1
    executions: int = 0


class Refund(BaseModel):
    """One card refund, keyed by the client's refund_id."""

    refund_id: str
    acquirer_reference: str
    fingerprint: str
    payment_reference: str
    amount_minor: int
    currency: str
    status: RefundStatus
    failure_reason: str | None = None
    created_at: datetime
    settle_at: datetime
    settled_at: datetime | None = None
    chargeback_at: datetime | None = None
    chargeback_id: str | None = None
    magic: int | None = None
    idempotency_keys: list[str] = Field(default_factory=list)
    requests: int = 1
    executions: int = 0


class IdempotencyRecord(BaseModel):
    """The first response to an Idempotency-Key, replayed for the same key and body."""

    key: str
    fingerprint: str
    refund_id: str
    status_code: int
    body: bytes


class Chargeback(BaseModel):
    """A chargeback the acquirer raised on a payment."""

    id: str
    payment_reference: str
    amount_minor: int
    currency: str
    reason_code: str
    created_at: datetime
    refund_id: str | None = None


class Callback(BaseModel):
    """A webhook to deliver (or delivered), with its delivery history."""

    webhook_id: str
    rail: Literal["bank", "card"]
    event_type: str
    object_id: str
    content_type: str
    body: str
    seq: int
    created_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    deliveries: int = 0  # successful POSTs, more than one when duplicated on purpose
    delivered_at: datetime | None = None
    failed: bool = False
    last_status: int | None = None
    last_error: str | None = None
    duplicate: bool = False


class SimState(BaseModel):
    """Everything the simulator knows; the unit of persistence."""

    transfers: dict[str, Transfer] = Field(default_factory=dict)
    refunds: dict[str, Refund] = Field(default_factory=dict)
    idempotency: dict[str, IdempotencyRecord] = Field(default_factory=dict)
    chargebacks: dict[str, Chargeback] = Field(default_factory=dict)
    callbacks: list[Callback] = Field(default_factory=list)
    transient_seen: set[str] = Field(default_factory=set)
    counters: dict[str, int] = Field(default_factory=dict)
    clock: dict[str, str | float] | None = None
    # Random per state (so per reset): ids such as webhook-ids and chargeback ids must not
    # repeat after `/control/reset`, or a receiver that deduplicates on them would silently
    # drop new events as replays of old ones.
    instance: str = Field(default_factory=lambda: secrets.token_hex(4))

    def next_id(self, prefix: str) -> str:
        """A new id `prefix_<instance>_<n>`: unique across resets, increasing per prefix."""
        value = self.counters.get(prefix, 0) + 1
        self.counters[prefix] = value
        return f"{prefix}_{self.instance}_{value}"


def load_state(path: Path) -> SimState:
    """Read a state file, or an empty state when the file does not exist yet."""
    if not path.exists():
        return SimState()
    return SimState.model_validate_json(path.read_bytes())


def save_state(state: SimState, path: Path) -> None:
    """Write the state atomically: a crash mid-write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = state.model_dump_json()
    fd, tmp_name = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
