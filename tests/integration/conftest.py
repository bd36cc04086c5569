"""An in-process API over the test database, and API keys for any role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from escrow import bootstrap
from escrow.api.app import create_app
from escrow.api.deps import Components
from escrow.auth import create_key
from escrow.ports import ManualClock
from escrow.settings import load_settings
from tests.conftest import TestDB


@dataclass
class Api:
    client: TestClient
    parts: Components
    clock: ManualClock
    db: TestDB

    def key(self, role: str, party: str | None = None, name: str = "test") -> dict[str, str]:
        """Authorization header of a new key with `role`."""
        with self.parts.engine.begin() as conn:
            _, key = create_key(
                conn,
                role=role,
                name=name,
                party_id=party,
                now=self.clock.now(),
                pepper=self.parts.settings.api_key_pepper.get_secret_value().encode(),
            )
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api_factory(db: TestDB) -> Iterator[Callable[..., Api]]:
    made: list[Api] = []

    def make(**overrides: object) -> Api:
        settings = load_settings(database_url=db.url, audit_seal_interval_ms=0, api_key_cache_ttl_ms=0, **overrides)
        clock = ManualClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
        parts = bootstrap.components(settings, clock=clock)
        client = TestClient(create_app(parts), raise_server_exceptions=False)
        api = Api(client, parts, clock, db)
        made.append(api)
        return api

    yield make
    for api in made:
        api.client.close()
        api.parts.engine.dispose()


@pytest.fixture
def api(api_factory: Callable[..., Api]) -> Api:
    return api_factory()
