"""API keys and the principals they stand for.

A key is `esk_<key id>_<secret>`; only an HMAC-SHA256 digest of the secret is stored, and
it is compared in constant time. The key id in front lets a request find its row with one
primary-key lookup instead of hashing against every key. Verified keys are cached for
`api_key_cache_ttl_ms`, which is also how long a revocation may take to bite.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, Engine, select, update

from escrow.errors import InvalidInput, NotFound, Unauthenticated
from escrow.persistence.tables import ROLES, api_keys

KEY_PREFIX = "esk_"
NAME_CHARS_MAX = 200
_CACHE_ENTRIES_MAX = 10_000


class Role(StrEnum):
    CHECKOUT = "checkout"
    CP_AGENT = "cp_agent"
    CP_SUPERVISOR = "cp_supervisor"
    IP_STAFF = "ip_staff"
    FINANCE = "finance"
    LEGAL = "legal"
    RIGHTS_HOLDER = "rights_holder"
    ADMIN = "admin"


assert tuple(r.value for r in Role) == ROLES  # noqa: S101  # the CHECK constraint and the enum agree

STAFF = frozenset({Role.CP_AGENT, Role.CP_SUPERVISOR, Role.IP_STAFF, Role.FINANCE, Role.LEGAL, Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    role: Role
    party_id: str | None

    def owns(self, party_id: str | None) -> bool:
        """Whether this principal may see an object of `party_id` (unscoped roles see all)."""
        return self.role is not Role.RIGHTS_HOLDER or (party_id is not None and party_id == self.party_id)


def _digest(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def create_key(
    conn: Connection, *, role: str, name: str, party_id: str | None, now: datetime, pepper: bytes
) -> tuple[str, str]:
    """Create a key; returns (key id, the full key). The full key is never stored or shown again."""
    try:
        role_ = Role(role)
    except ValueError:
        raise InvalidInput(f"unknown role {role!r}; one of {', '.join(ROLES)}") from None
    if (role_ is Role.RIGHTS_HOLDER) != bool(party_id):
        raise InvalidInput("--party is required for rights_holder keys and refused for any other role")
    if not name or len(name) > NAME_CHARS_MAX:
        raise InvalidInput(f"name must be 1-{NAME_CHARS_MAX} characters")
    key_id = "key_" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        api_keys.insert(),
        {
            "id": key_id,
            "name": name,
            "role": role_.value,
            "party_id": party_id,
            "digest": _digest(pepper, secret),
            "created_at": now,
        },
    )
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}"


def revoke_key(conn: Connection, key_id: str, *, now: datetime) -> None:
    done = conn.execute(
        update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    if done.rowcount != 1:
        raise NotFound(f"no active API key {key_id}")


class Authenticator:
    """Turns an Authorization header into a Principal, with a short-lived cache."""

    def __init__(self, engine: Engine, *, pepper: bytes, cache_ttl_ms: int) -> None:
        self._engine = engine
        self._pepper = pepper
        self._ttl_s = cache_ttl_ms / 1000
        self._cache: dict[str, tuple[float, str, Principal]] = {}
        self._lock = threading.Lock()

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal if this key was verified within the TTL; None means ask `authenticate`.

        No I/O, so the async request path can try it without a hop to the thread pool.
        Raises Unauthenticated for malformed headers and for a cached key with a wrong secret.
        """
        key_id, digest = self._parse(authorization)
        cached = self._cache.get(key_id)
        if cached is None or time.monotonic() - cached[0] >= self._ttl_s:
            return None
        if hmac.compare_digest(cached[1], digest):
            return cached[2]
        raise Unauthenticated("invalid API key")

    def _parse(self, authorization: str | None) -> tuple[str, str]:
        if not authorization:
            raise Unauthenticated("missing Authorization: Bearer <api key>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith(KEY_PREFIX):
            raise Unauthenticated("Authorization must be 'Bearer esk_…'")
        # esk_key_<16 hex>_<secret>: the secret itself may contain '_'.
        parts = token[len(KEY_PREFIX) :].split("_", 2)
        if len(parts) != 3 or parts[0] != "key" or len(parts[1]) != 16 or not parts[2]:
            raise Unauthenticated("malformed API key")
        return f"key_{parts[1]}", _digest(self._pepper, parts[2])

    def authenticate(self, authorization: str | None) -> Principal:
        """Raises Unauthenticated for a missing, malformed, unknown or revoked key."""
        hit = self.cached(authorization)
        if hit is not None:
            return hit
        key_id, digest = self._parse(authorization)
        now = time.monotonic()
        with self._engine.connect() as conn:
            row = conn.execute(
                select(api_keys.c.name, api_keys.c.role, api_keys.c.party_id, api_keys.c.digest).where(
                    api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)
                )
            ).one_or_none()
        # Compare even when the row is missing, so timing does not reveal which ids exist.
        stored = row.digest if row is not None else "0" * 64
        if not hmac.compare_digest(stored, digest) or row is None:
            raise Unauthenticated("invalid API key")
        principal = Principal(key_id, row.name, Role(row.role), row.party_id)
        if self._ttl_s > 0:
            with self._lock:
                if len(self._cache) >= _CACHE_ENTRIES_MAX:
                    self._cache.clear()
                self._cache[key_id] = (now, row.digest, principal)
        return principal

    def forget_all(self) -> None:
        with self._lock:
            self._cache.clear()

    def forget(self, key_id: str) -> None:
        """Drop a cached key at once (after a revocation made by this process)."""
        with self._lock:
            self._cache.pop(key_id, None)
