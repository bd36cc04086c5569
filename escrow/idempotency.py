"""Idempotency-Key handling (IETF draft "The Idempotency-Key HTTP Header Field").

A key is claimed in its own short transaction (so a concurrent duplicate sees it at once and
gets 409), and completed *inside the transaction of the operation itself*, together with the
stored response. So either the operation committed and its response is stored, or neither
happened: a crash between the two cannot leave a performed-but-unrecorded request that a
retry would perform again. A claim whose request died before committing goes stale after
IDEMPOTENCY_LOCK_S and may then be taken over; the takeover changes the claim's token, so
a straggler that wakes up late cannot complete (its transaction is rolled back).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from escrow.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidInput
from escrow.limits import IDEMPOTENCY_KEY_CHARS_MAX, IDEMPOTENCY_LOCK_S, IDEMPOTENCY_TTL_S
from escrow.persistence.db import transaction
from escrow.persistence.tables import idempotency_keys as keys


@dataclass(frozen=True, slots=True)
class Claim:
    principal_id: str
    key: str
    token: str


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: str


def validate_key(key: str) -> str:
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_CHARS_MAX or not key.isascii() or not key.isprintable():
        raise InvalidInput(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_CHARS_MAX} printable ASCII characters",
            field="Idempotency-Key",
        )
    return key


def fingerprint(method: str, path: str, body: Any) -> str:
    """A hash of what the request asks for; JSON key order and whitespace do not matter.

    Bodies here are parsed, validated JSON without floats (money is integer minor units),
    so sorted-key orjson is canonical for them and ~20x cheaper than RFC 8785, which this
    sits in the path of every order. The audit chain, which a court may recompute, keeps
    RFC 8785.
    """
    request = {"method": method, "path": path, "body": body}
    try:
        canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # What orjson cannot write (integers beyond 64 bits, lone surrogates in the raw items
        # of a batch) the standard library can, escaped; the prefix keeps the two apart.
        canonical = b"json:" + json.dumps(request, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


_CLAIM_ATTEMPTS = 3  # a key deleted under the claim this often in a row is contention: 409, retry later


def _insert(dialect: str) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(keys)


def claim(engine: Engine, principal_id: str, key: str, request_hash: str, now: datetime) -> Claim | StoredResponse:
    """Claim `key` for this request, or return the stored response of the first one.

    Raises IdempotencyKeyReused (same key, other request) and IdempotencyKeyInUse (the
    first request with this key is still running).
    """
    validate_key(key)
    token = secrets.token_hex(16)
    fresh = {
        "request_hash": request_hash,
        "state": "running",
        "lock_token": token,
        "locked_until": now + timedelta(seconds=IDEMPOTENCY_LOCK_S),
        "response_status": None,
        "response_body": None,
        "created_at": now,
        "expires_at": now + timedelta(seconds=IDEMPOTENCY_TTL_S),
    }
    this = and_(keys.c.principal_id == principal_id, keys.c.key == key)

    def work(conn: Connection) -> Claim | StoredResponse:
        for _ in range(_CLAIM_ATTEMPTS):
            inserted = conn.execute(
                _insert(conn.dialect.name)
                .values(principal_id=principal_id, key=key, **fresh)
                .on_conflict_do_nothing(index_elements=["principal_id", "key"])
                .returning(keys.c.key)
            ).first()
            if inserted is not None:
                return Claim(principal_id, key, token)
            row = conn.execute(select(keys).where(this).with_for_update()).one_or_none()
            if row is not None:
                break
            # The row the insert ran into was deleted before it could be locked (a failed
            # first attempt released it, or an expired key was purged): insert again.
        else:
            raise IdempotencyKeyInUse("this Idempotency-Key is changing hands; retry later")
        if row.expires_at <= now:  # kept 24 h; after that the key starts afresh
            conn.execute(update(keys).where(this).values(**fresh))
            return Claim(principal_id, key, token)
        if row.request_hash != request_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was used for a different request; use a new key")
        if row.state == "completed":
            return StoredResponse(int(row.response_status), str(row.response_body))
        if row.locked_until > now:
            raise IdempotencyKeyInUse("the first request with this Idempotency-Key is still running; retry later")
        # The first request died before committing (or its claim would be completed): take over.
        conn.execute(update(keys).where(this).values(lock_token=token, locked_until=fresh["locked_until"]))
        return Claim(principal_id, key, token)

    return transaction(engine, work)


def complete(conn: Connection, claim_: Claim, status: int, body: str) -> None:
    """Store the response inside the operation's own transaction; refuses a lost claim."""
    done = conn.execute(
        update(keys)
        .where(
            keys.c.principal_id == claim_.principal_id,
            keys.c.key == claim_.key,
            keys.c.lock_token == claim_.token,
        )
        .values(state="completed", response_status=status, response_body=body, lock_token=None, locked_until=None)
    )
    if done.rowcount != 1:
        raise IdempotencyKeyInUse("this request's Idempotency-Key claim was taken over; nothing was done")


def complete_failed(engine: Engine, claim_: Claim, status: int, body: str) -> None:
    """Store a refusal (4xx) so a retry with the same key gets the same answer."""
    with engine.begin() as conn:
        complete(conn, claim_, status, body)


def release(engine: Engine, claim_: Claim) -> None:
    """Forget a claim whose request failed unexpectedly, so a retry runs it afresh."""
    with engine.begin() as conn:
        conn.execute(
            delete(keys).where(
                keys.c.principal_id == claim_.principal_id,
                keys.c.key == claim_.key,
                keys.c.lock_token == claim_.token,
            )
        )


def purge_expired(engine: Engine, now: datetime) -> int:
    """Delete keys past their 24-hour retention; returns how many."""
    with engine.begin() as conn:
        return int(conn.execute(delete(keys).where(keys.c.expires_at <= now)).rowcount)
