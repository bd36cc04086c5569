"""Payout accounts of parties (sellers, rights holders, buyers refunded by bank transfer).

The IBAN is validated (schwifty: country, length, checksum), encrypted at rest with Fernet
under a key ring (MultiFernet: newest key encrypts, every key in the ring decrypts, so keys
rotate without a migration) and shown only masked: country and check digits, then the last
four characters (`DE89 **** **** **** **** 3000`). The full number never reaches a log line,
an event, an audit record or a response.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from sqlalchemy import Connection, select

from escrow import audit, events
from escrow.audit import Actor
from escrow.errors import ConfigurationError, InvalidInput, NotFound
from escrow.persistence.tables import payout_accounts
from escrow.service.orders import _insert

log = structlog.get_logger(__name__)

ACCOUNT_KEYS_MAX = 8


class AccountCipher:
    """Encrypts account numbers with the newest key; decrypts with any key of the ring."""

    def __init__(self, keys: list[str]) -> None:
        if not 1 <= len(keys) <= ACCOUNT_KEYS_MAX:
            raise ConfigurationError(f"ESCROW_ACCOUNT_KEYS: configure 1..{ACCOUNT_KEYS_MAX} Fernet keys")
        try:
            self._ring = MultiFernet([Fernet(k.strip().encode()) for k in keys])
        except ValueError:
            raise ConfigurationError("ESCROW_ACCOUNT_KEYS: each key must be a url-safe base64 Fernet key") from None

    def encrypt(self, plain: str) -> str:
        return self._ring.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        """Raises ConfigurationError when no key of the ring opens it (a key was retired too early)."""
        try:
            return self._ring.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigurationError("no account key decrypts a stored account number") from None

    def rotate(self, token: str) -> str:
        """Re-encrypt under the newest key."""
        return self._ring.rotate(token.encode()).decode()


def development_keys(var_dir: Path) -> list[str]:
    """A key generated once into `var_dir/account-keys` (for `make run` and tests only)."""
    path = var_dir / "account-keys"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(Fernet.generate_key().decode() + "\n")
    for _ in range(100):  # the creator may not have written yet
        keys = [k for k in path.read_text().split(",") if k.strip()]
        if keys:
            return [k.strip() for k in keys]
    raise ConfigurationError(f"{path} holds no key")


def mask_iban(iban: str) -> str:
    """`DE89 **** **** **** **** 3000`: country and check digits, the last four, nothing else."""
    middle = len(iban) - 8
    groups = max(1, -(-middle // 4))
    return " ".join([iban[:4], *(["****"] * groups), iban[-4:]])


def _validated(iban: str, bic: str | None) -> tuple[str, str | None]:
    compact = "".join(iban.split()).upper()
    try:
        parsed = IBAN(compact)
    except (SchwiftyException, ValueError):
        raise InvalidInput(
            "iban is not a valid IBAN", field="iban", errors=[{"field": "iban", "message": "invalid IBAN"}]
        ) from None
    bic_out: str | None = None
    if bic is not None:
        try:
            bic_out = str(BIC("".join(bic.split()).upper()))
        except (SchwiftyException, ValueError):
            raise InvalidInput(
                "bic is not a valid BIC", field="bic", errors=[{"field": "bic", "message": "invalid BIC"}]
            ) from None
    return str(parsed.compact), bic_out


def account_view(row: Any) -> dict[str, Any]:
    return {
        "party_id": row.party_id,
        "holder_name": row.holder_name,
        "iban_masked": row.iban_masked,
        "bic": row.bic,
        "updated_at": row.updated_at,
    }


def put_payout_account(
    conn: Connection,
    actor: Actor,
    now: datetime,
    cipher: AccountCipher,
    *,
    party_id: str,
    holder_name: str,
    iban: str,
    bic: str | None,
) -> dict[str, Any]:
    """Create or replace the payout account of `party_id`. Raises InvalidInput (IBAN, BIC)."""
    compact, bic_out = _validated(iban, bic)
    masked = mask_iban(compact)
    values = {
        "holder_name": holder_name,
        "iban_ciphertext": cipher.encrypt(compact),
        "iban_masked": masked,
        "bic": bic_out,
        "updated_at": now,
    }
    stmt = _insert(conn, payout_accounts).values(party_id=party_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["party_id"], set_=values))
    audit.record(
        conn, actor, "payout_account.updated", f"party:{party_id}", now=now,
        data={"iban_masked": masked, "bic": bic_out, "holder_name": holder_name},
    )  # fmt: skip
    events.emit(conn, "payout_account.updated", {"party_id": party_id, "iban_masked": masked}, now=now)
    log.info("payout_account_updated", party_id=party_id, iban_masked=masked)
    return get_payout_account(conn, party_id)


def get_payout_account(conn: Connection, party_id: str) -> dict[str, Any]:
    row = conn.execute(select(payout_accounts).where(payout_accounts.c.party_id == party_id)).one_or_none()
    if row is None:
        raise NotFound(f"party {party_id} has no payout account")
    return account_view(row)


def destination_of(conn: Connection, party_id: str) -> dict[str, Any] | None:
    """The encrypted snapshot an instruction carries (so a later change cannot alter a sent transfer)."""
    row = conn.execute(select(payout_accounts).where(payout_accounts.c.party_id == party_id)).one_or_none()
    if row is None:
        return None
    return {
        "party_id": party_id,
        "holder_name": row.holder_name,
        "iban_ciphertext": row.iban_ciphertext,
        "iban_masked": row.iban_masked,
        "bic": row.bic,
    }
