"""Idempotency-Key: replay, reuse, in-use, and exactly-once execution under concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest

from escrow import idempotency
from escrow.limits import IDEMPOTENCY_LOCK_S, IDEMPOTENCY_TTL_S
from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import DEPOSIT, assert_problem


def deposit(api: Api, headers: dict[str, str], key: str | None, body: dict[str, Any] = DEPOSIT) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return api.client.post("/v1/sellers/s1/deposit", json=body, headers={**headers, **extra})


def deposit_balance(api: Api) -> int:
    from escrow.ledger import Ledger

    with api.parts.engine.connect() as conn:
        return Ledger(conn).balance("seller:s1:deposit", "EUR")


class TestReplay:
    def test_same_key_same_body_replays_the_first_response(self, api: Api) -> None:
        """The retry gets the identical response, marked replayed, and money moves once."""
        headers = api.key("finance")
        first = deposit(api, headers, "k-1")
        second = deposit(
            api, headers, "k-1", body={"reference": "dep-1", "amount": {"currency": "EUR", "amount": 5000}}
        )
        assert first.status_code == second.status_code == 201
        assert second.content == first.content
        assert second.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert deposit_balance(api) == 5000
        assert api.db.count("journal_entries") == 1 and api.db.count("audit_records") == 1

    def test_same_key_other_body_is_422(self, api: Api) -> None:
        """Reusing a key for a different request is refused and changes nothing."""
        headers = api.key("finance")
        deposit(api, headers, "k-1")
        other = deposit(api, headers, "k-1", body={**DEPOSIT, "reference": "dep-2"})
        assert_problem(other, 422, "idempotency_key_reused")
        assert deposit_balance(api) == 5000

    def test_same_key_other_path_is_422(self, api: Api) -> None:
        """A key is bound to the request it was first used for, path included."""
        headers = api.key("finance")
        deposit(api, headers, "k-1")
        other = api.client.post("/v1/sellers/s2/deposit", json=DEPOSIT, headers={**headers, "Idempotency-Key": "k-1"})
        assert_problem(other, 422, "idempotency_key_reused")

    def test_keys_are_scoped_to_the_caller(self, api: Api) -> None:
        """Two callers may use the same key string independently."""
        deposit(api, api.key("finance", name="a"), "shared")
        second = deposit(api, api.key("finance", name="b"), "shared")
        assert second.status_code == 201 and "idempotent-replayed" not in second.headers
        assert deposit_balance(api) == 10000

    def test_without_a_key_every_request_executes(self, api: Api) -> None:
        headers = api.key("finance")
        deposit(api, headers, None)
        deposit(api, headers, None)
        assert deposit_balance(api) == 10000

    @pytest.mark.parametrize("key", ["", "x" * 256, "ключ"])
    def test_malformed_key_is_refused(self, api: Api, key: str) -> None:
        """Empty, oversized or non-ASCII keys are refused before anything runs."""
        headers: dict[str, Any] = {**api.key("finance"), "Idempotency-Key": key.encode()}
        response = api.client.post("/v1/sellers/s1/deposit", json=DEPOSIT, headers=headers)
        assert_problem(response, 422, "invalid_input")
        assert api.db.count("journal_entries") == 0

    def test_a_refusal_is_stored_and_replayed(self, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
        """A 4xx outcome of the operation is replayed for the same key instead of re-running it."""
        import escrow.api.routers.sellers as sellers
        from escrow.errors import InsufficientFunds

        calls = []

        def refuse(*_: Any, **__: Any) -> Any:
            calls.append(1)
            raise InsufficientFunds("seller:s1:deposit would go negative")

        monkeypatch.setattr(sellers, "record_deposit", refuse)
        headers = api.key("finance")
        first = deposit(api, headers, "k-9")
        again = deposit(api, headers, "k-9")
        assert_problem(first, 409, "insufficient_funds")
        assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
        assert len(calls) == 1

    def test_an_unexpected_failure_releases_the_key(self, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
        """After a 500 nothing was committed, so a retry with the same key runs afresh."""
        import escrow.api.routers.sellers as sellers

        original = sellers.record_deposit
        monkeypatch.setattr(sellers, "record_deposit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        headers = api.key("finance")
        assert deposit(api, headers, "k-5").status_code == 500
        monkeypatch.setattr(sellers, "record_deposit", original)
        retry = deposit(api, headers, "k-5")
        assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
        assert deposit_balance(api) == 5000


class TestInUse:
    def test_running_key_is_409(self, api: Api) -> None:
        """While the first request holds the key, a second one is told 409 idempotency_key_in_use."""
        headers = api.key("finance")
        key_id = "key_" + headers["Authorization"].split("_")[2]
        body_hash = idempotency.fingerprint("POST", "/v1/sellers/s1/deposit", DEPOSIT)
        claim = idempotency.claim(api.parts.engine, key_id, "k-1", body_hash, api.clock.now())
        assert isinstance(claim, idempotency.Claim)
        assert_problem(deposit(api, headers, "k-1"), 409, "idempotency_key_in_use")
        assert deposit_balance(api) == 0

    def test_a_stale_claim_is_taken_over_and_the_straggler_cannot_complete(self, api: Api) -> None:
        """A claim older than the lock belongs to a dead request: a retry takes over, the old claim is void."""
        headers = api.key("finance")
        key_id = "key_" + headers["Authorization"].split("_")[2]
        body_hash = idempotency.fingerprint("POST", "/v1/sellers/s1/deposit", DEPOSIT)
        stale = idempotency.claim(api.parts.engine, key_id, "k-1", body_hash, api.clock.now())
        assert isinstance(stale, idempotency.Claim)
        api.clock.advance(timedelta(seconds=IDEMPOTENCY_LOCK_S + 1))
        assert deposit(api, headers, "k-1").status_code == 201
        from escrow.errors import IdempotencyKeyInUse

        with pytest.raises(IdempotencyKeyInUse), api.parts.engine.begin() as conn:
            idempotency.complete(conn, stale, 201, "{}")
        assert deposit_balance(api) == 5000

    def test_keys_expire_after_their_retention(self, api: Api) -> None:
        """After 24 hours the key is forgotten: purge removes it and the key may be used afresh."""
        headers = api.key("finance")
        deposit(api, headers, "k-1")
        api.clock.advance(timedelta(seconds=IDEMPOTENCY_TTL_S + 1))
        assert idempotency.purge_expired(api.parts.engine, api.clock.now()) == 1
        assert deposit(api, headers, "k-1").status_code == 201
        assert deposit_balance(api) == 10000


def test_concurrent_requests_with_one_key_execute_once(pg_db: Any) -> None:
    """Twelve threads send the same keyed request at once on PostgreSQL: one deposit is booked."""
    from datetime import UTC, datetime

    from fastapi.testclient import TestClient

    from escrow import bootstrap
    from escrow.api.app import create_app
    from escrow.ports import ManualClock
    from escrow.settings import load_settings

    settings = load_settings(database_url=pg_db.url, audit_seal_interval_ms=0, api_key_cache_ttl_ms=0)
    parts = bootstrap.components(settings, clock=ManualClock(datetime(2026, 11, 29, tzinfo=UTC)))
    api = Api(TestClient(create_app(parts), raise_server_exceptions=False), parts, parts.clock, pg_db)  # type: ignore[arg-type]
    headers = api.key("finance")
    barrier = threading.Barrier(12)
    statuses: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        response = deposit(api, headers, "same-key")
        with lock:
            statuses.append((response.status_code, response.headers.get("idempotent-replayed")))

    threads = [threading.Thread(target=send) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    api.client.close()

    executed = [s for s in statuses if s == (201, None)]
    assert len(executed) == 1, statuses
    assert all(s in {(201, "true"), (409, None)} for s in statuses if s != (201, None)), statuses
    assert deposit_balance(api) == 5000
    assert pg_db.count("journal_entries") == 1 and pg_db.count("audit_records") == 1
    parts.engine.dispose()


@pytest.mark.parametrize("vanishes", [1, 5])
def test_a_claimed_key_deleted_before_it_is_locked_is_claimed_afresh(
    pg_db: Any, monkeypatch: pytest.MonkeyPatch, vanishes: int
) -> None:
    """PostgreSQL, READ COMMITTED: the claim's insert runs into a running key, whose failed first
    request then releases (deletes) it before the claim can lock it. The lock finds no row: the
    claim inserts again and wins (it was a 500). A key that keeps coming back and vanishing is
    409, retry later."""
    from datetime import UTC, datetime

    from sqlalchemy import delete, insert, select

    from escrow.errors import IdempotencyKeyInUse
    from escrow.persistence.tables import idempotency_keys as keys

    now = datetime(2026, 11, 29, tzinfo=UTC)
    first = idempotency.claim(pg_db.engine, "key_a", "k-1", "hash-1", now)
    with pg_db.engine.connect() as conn:
        running = dict(conn.execute(select(keys)).one()._mapping)
    real = idempotency.transaction
    deleted = [0]

    def elsewhere(statement: Any) -> None:
        with pg_db.engine.begin() as other:
            other.execute(statement)

    def interleaved(engine: Any, work: Any) -> Any:
        def between(conn: Any) -> Any:
            execute = conn.execute

            def execute_and_race(statement: Any, *args: Any, **kwargs: Any) -> Any:
                result = execute(statement, *args, **kwargs)
                if statement.is_insert and deleted[0] < vanishes:  # it met the running key
                    deleted[0] += 1
                    elsewhere(delete(keys))  # the first request fails and releases its key
                elif statement.is_select and deleted[0] < vanishes:  # found none: another first request
                    elsewhere(insert(keys).values(**running))
                return result

            conn.execute = execute_and_race
            return work(conn)

        return real(engine, between)

    monkeypatch.setattr(idempotency, "transaction", interleaved)
    later = now + timedelta(seconds=1)
    if vanishes == 1:
        claim = idempotency.claim(pg_db.engine, "key_a", "k-1", "hash-1", later)
        assert isinstance(claim, idempotency.Claim) and claim.token != first.token
    else:
        with pytest.raises(IdempotencyKeyInUse):
            idempotency.claim(pg_db.engine, "key_a", "k-1", "hash-1", later)
    assert pg_db.count("idempotency_keys") == 1
