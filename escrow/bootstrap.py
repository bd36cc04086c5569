"""The composition root: the only place that picks concrete implementations."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import httpx

from adapters.bank.iso20022 import Iso20022BankRail
from adapters.card.acquirer import AcquirerCardRail
from adapters.webhooks import verify
from escrow.auth import Authenticator
from escrow.outbox import Rails
from escrow.persistence.db import make_engine
from escrow.persistence.statements import SingleStatements
from escrow.ports import (
    BankAccount,
    BankEvent,
    CardEvent,
    CardRefund,
    Clock,
    CreditTransfer,
    RailUnavailable,
    RefundReceipt,
    RefundStatus,
    SettlementReport,
    Statement,
    SystemClock,
    TransferReceipt,
    TransferStatus,
)
from escrow.screening.registry import REFRESH_INTERVAL_S_DEFAULT, MatcherRegistry
from escrow.service.findings import DatabaseFindingSource, FindingsScreener
from escrow.service.payout_accounts import AccountCipher, development_keys
from escrow.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:  # the worker builds rails without loading the web framework
    from fastapi import FastAPI

    from escrow.api.deps import Components


class _UnconfiguredBank:
    """The bank when ESCROW_BANK_URL is unset: reads callbacks, refuses to send (instructions wait)."""

    def __init__(self, reader: Iso20022BankRail) -> None:
        self._reader = reader

    def send_credit_transfer(self, instruction: CreditTransfer) -> TransferReceipt:
        raise RailUnavailable("no bank configured (set ESCROW_BANK_URL)", key=instruction.end_to_end_id)

    def transfer_status(self, end_to_end_id: str) -> TransferStatus:
        raise RailUnavailable("no bank configured (set ESCROW_BANK_URL)", key=end_to_end_id)

    def parse_notification(self, body: bytes) -> list[BankEvent]:
        return self._reader.parse_notification(body)

    def statement(self, on: date) -> Statement:
        raise RailUnavailable("no bank configured (set ESCROW_BANK_URL)")

    def parse_statement(self, body: bytes) -> Statement:
        return self._reader.parse_statement(body)


class _UnconfiguredCard:
    """The acquirer when ESCROW_CARD_URL is unset: reads webhooks, refuses to send."""

    def __init__(self, reader: AcquirerCardRail) -> None:
        self._reader = reader

    def refund(self, instruction: CardRefund) -> RefundReceipt:
        raise RailUnavailable("no card acquirer configured (set ESCROW_CARD_URL)", key=instruction.refund_id)

    def refund_status(self, refund_id: str) -> RefundStatus:
        raise RailUnavailable("no card acquirer configured (set ESCROW_CARD_URL)", key=refund_id)

    def parse_webhook(self, body: bytes) -> list[CardEvent]:
        return self._reader.parse_webhook(body)

    def settlement_report(self, on: date) -> SettlementReport:
        raise RailUnavailable("no card acquirer configured (set ESCROW_CARD_URL)")


def _secrets(value: object) -> tuple[str, ...]:
    raw = value.get_secret_value() if value is not None else ""  # type: ignore[attr-defined]
    return tuple(s.strip() for s in str(raw).split(",") if s.strip())


def rails(settings: Settings) -> Rails:
    """The payment rails from settings: the HTTP adapters at ESCROW_BANK_URL / ESCROW_CARD_URL.

    Unset, a rail reads callbacks but sends nothing: its instructions wait in the outbox.
    """
    timeout = httpx.Timeout(settings.rail_timeout_ms / 1000)
    debtor = BankAccount(iban=settings.bank_debtor_iban, name=settings.bank_debtor_name, bic=settings.bank_debtor_bic)
    bank_client = httpx.Client(base_url=settings.bank_url or "http://bank.invalid", timeout=timeout)
    card_client = httpx.Client(base_url=settings.card_url or "http://card.invalid", timeout=timeout)
    bank_adapter = Iso20022BankRail(bank_client, debtor=debtor)
    card_adapter = AcquirerCardRail(card_client)
    keys = (
        _secrets(settings.account_keys)
        if settings.account_keys is not None
        else tuple(development_keys(PROJECT_ROOT / "var"))
    )
    return Rails(
        bank=bank_adapter if settings.bank_url else _UnconfiguredBank(bank_adapter),
        card=card_adapter if settings.card_url else _UnconfiguredCard(card_adapter),
        cipher=AccountCipher(list(keys)),
        verify=verify,
        webhook_secrets={
            "bank": _secrets(settings.webhook_secrets_bank),
            "card": _secrets(settings.webhook_secrets_card),
        },
    )


def components(
    settings: Settings,
    *,
    clock: Clock | None = None,
    findings_refresh_interval_s: float = REFRESH_INTERVAL_S_DEFAULT,
) -> Components:
    from escrow.api.deps import Components

    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    clock = clock or SystemClock()
    # The live findings matcher: built and swapped by a background loop, read by screening.
    registry = MatcherRegistry(DatabaseFindingSource(engine), clock.now, interval_s=findings_refresh_interval_s)
    registry.warm()  # screening must not be the first reader: intake screens inside its transaction
    postgres = engine.dialect.name == "postgresql"
    parts = Components(
        settings=settings,
        engine=engine,
        clock=clock,
        authenticator=Authenticator(
            engine,
            pepper=settings.api_key_pepper.get_secret_value().encode(),
            cache_ttl_ms=settings.api_key_cache_ttl_ms,
        ),
        screener=FindingsScreener(registry, clock),
        background=[registry.run],
        rails=rails(settings),
        statements=SingleStatements(engine.url, settings.intake_connections) if postgres else None,
    )
    return parts


def app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    from escrow.api.app import create_app

    return create_app(components(settings, clock=clock))


def asgi() -> FastAPI:
    """Factory for `uvicorn --factory escrow.bootstrap:asgi` (settings from the environment)."""
    from escrow.logs import configure
    from escrow.settings import load_settings

    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    return app(settings)
