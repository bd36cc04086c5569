"""Configuration: `ESCROW_*` environment variables plus policy files in `config/`.

Both are validated at start-up. A wrong value stops the process with a message that names
the variable or the file and field, because a payments service that starts with a silently
defaulted claim window is worse than one that does not start.
"""

from __future__ import annotations

import os
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from escrow.errors import ConfigurationError, InvalidMoney
from escrow.limits import AMOUNT_MINOR_MAX
from escrow.money import check_currency

PROJECT_ROOT = Path(__file__).resolve().parents[1]

RecoverySource = Literal["order_held", "frozen", "payable", "deposit"]


class StrikeRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    points_per_year: Annotated[int, Field(gt=0, le=1000)]
    freeze_at_strikes: Annotated[int, Field(gt=0, le=100)]


class JurisdictionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hold_max_days: Annotated[int, Field(gt=0, le=3650)]
    hold_extension_days_max: Annotated[int, Field(ge=0, le=3650)]
    review_hold_days: Annotated[int, Field(gt=0, le=365)]
    claim_window_days: Annotated[int, Field(gt=0, le=365)]
    waterfall_mode: Literal["pro_rata", "first_awarded"]
    recovery_order: Annotated[list[RecoverySource], Field(min_length=1)]
    approval_threshold: dict[str, Annotated[int, Field(ge=0, le=AMOUNT_MINOR_MAX)]]
    strikes: StrikeRules

    @field_validator("approval_threshold")
    @classmethod
    def _currencies_exist(cls, value: dict[str, int]) -> dict[str, int]:
        for code in value:
            try:
                check_currency(code)
            except InvalidMoney as exc:
                raise ValueError(exc.detail) from None
        return value

    @field_validator("recovery_order")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("recovery_order names a source twice")
        return value

    @model_validator(mode="after")
    def _review_within_max(self) -> JurisdictionPolicy:
        if self.review_hold_days > self.hold_max_days:
            raise ValueError("review_hold_days exceeds hold_max_days")
        return self


class Policies(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_jurisdiction: str
    jurisdictions: Annotated[dict[str, JurisdictionPolicy], Field(min_length=1)]

    @model_validator(mode="after")
    def _default_exists(self) -> Policies:
        if self.default_jurisdiction not in self.jurisdictions:
            raise ValueError(f"default_jurisdiction {self.default_jurisdiction!r} has no [jurisdictions] table")
        return self

    def for_jurisdiction(self, code: str | None) -> JurisdictionPolicy:
        return self.jurisdictions.get(code or "", self.jurisdictions[self.default_jurisdiction])


class Settings(BaseSettings):
    """Process settings; every field can be set as ESCROW_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="ESCROW_", extra="forbid", frozen=True)

    database_url: str = f"sqlite:///{PROJECT_ROOT / 'var' / 'escrow.db'}"
    config_dir: Path = PROJECT_ROOT / "config"
    # Verified API keys are cached this long; it bounds how late a revocation takes effect.
    api_key_cache_ttl_ms: Annotated[int, Field(ge=0, le=60_000)] = 5_000
    # The API process seals committed audit records this often (0: leave it to the worker).
    audit_seal_interval_ms: Annotated[int, Field(ge=0, le=60_000)] = 500
    # Keyed into the API-key digests; set your own in production (changing it voids all keys).
    api_key_pepper: SecretStr = SecretStr("escrow-development-pepper")
    db_pool_size: Annotated[int, Field(ge=1, le=200)] = 20
    # PostgreSQL connections of the order-intake fast lane, per process. Few on purpose:
    # orders that arrive while they are all busy are recorded together, one statement for
    # all (see escrow.api.intake.Coalescer), which is what keeps up under load.
    intake_connections: Annotated[int, Field(ge=1, le=200)] = 2
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    # --- payment rails, outbox and payouts ------------------------------------------------
    # Base URLs of the bank (ISO 20022) and card acquirer HTTP APIs; unset, that rail is not
    # configured and the outbox keeps its instructions pending (they are delivered once set).
    bank_url: str | None = None
    card_url: str | None = None
    rail_timeout_ms: Annotated[int, Field(ge=100, le=120_000)] = 10_000
    # The platform's own account that payouts and bank refunds are paid from.
    bank_debtor_iban: str = "DE89370400440532013000"
    bank_debtor_name: Annotated[str, Field(min_length=1, max_length=140)] = "Marketplace Escrow"
    bank_debtor_bic: str | None = "COBADEFFXXX"
    # Standard Webhooks secrets (`whsec_...`), comma-separated, newest first (rotation).
    webhook_secrets_bank: SecretStr | None = None
    webhook_secrets_card: SecretStr | None = None
    # Fernet keys encrypting payout account numbers, comma-separated, newest first (rotation).
    # Unset: a development key is generated once into var/account-keys.
    account_keys: SecretStr | None = None
    outbox_attempts_max: Annotated[int, Field(ge=1, le=100)] = 12
    outbox_backoff_base_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 1_000
    outbox_backoff_cap_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 600_000
    outbox_lease_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 120_000
    outbox_poll_ms: Annotated[int, Field(ge=10, le=86_400_000)] = 60_000
    outbox_batch: Annotated[int, Field(ge=1, le=1_000)] = 50
    payout_sweep: bool = True

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("only sqlite:/// and postgresql:// URLs are supported")
        return value

    @cached_property
    def policies(self) -> Policies:
        return load_policies(self.config_dir / "policies.toml")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _describe(exc: ValidationError, where: str) -> str:
    lines = [f"invalid configuration in {where}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)


def load_policies(path: Path) -> Policies:
    """Read and validate the policy file; raises ConfigurationError naming file and field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"policy file {path} not found (set ESCROW_CONFIG_DIR)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"policy file {path} is not valid TOML: {exc}") from None
    try:
        return Policies.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, str(path))) from None


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and overrides), with policies loaded and checked."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]  # pydantic validates
    except ValidationError as exc:
        named = _describe(exc, "environment")
        for err in exc.errors():
            if err["loc"]:
                named = named.replace(f"  {err['loc'][0]}:", f"  ESCROW_{str(err['loc'][0]).upper()}:")
        raise ConfigurationError(named) from None
    settings.policies  # noqa: B018  # fail at start-up, not on the first order
    return settings


def environment_snapshot() -> dict[str, str]:
    """The ESCROW_* variables in force, for a start-up log line (values of secrets hidden)."""
    return {k: ("***" if "SECRET" in k or "KEY" in k else v) for k, v in os.environ.items() if k.startswith("ESCROW_")}
