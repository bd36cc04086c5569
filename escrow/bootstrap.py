"""The composition root: the only place that picks concrete implementations."""

from __future__ import annotations

from fastapi import FastAPI

from escrow.api.app import create_app
from escrow.api.deps import Components
from escrow.auth import Authenticator
from escrow.persistence.db import make_engine
from escrow.ports import Clock, SystemClock
from escrow.screening.registry import REFRESH_INTERVAL_S_DEFAULT, MatcherRegistry
from escrow.service.findings import DatabaseFindingSource, FindingsScreener
from escrow.settings import Settings


def components(
    settings: Settings,
    *,
    clock: Clock | None = None,
    findings_refresh_interval_s: float = REFRESH_INTERVAL_S_DEFAULT,
) -> Components:
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    clock = clock or SystemClock()
    # The live findings matcher: built and swapped by a background loop, read by screening.
    registry = MatcherRegistry(DatabaseFindingSource(engine), clock.now, interval_s=findings_refresh_interval_s)
    registry.warm()  # screening must not be the first reader: intake screens inside its transaction
    return Components(
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
    )


def app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    return create_app(components(settings, clock=clock))


def asgi() -> FastAPI:
    """Factory for `uvicorn --factory escrow.bootstrap:asgi` (settings from the environment)."""
    from escrow.logs import configure
    from escrow.settings import load_settings

    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    return app(settings)
