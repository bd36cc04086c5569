"""Races on PostgreSQL: one order hit by releases, confirmation and expiry at once; the event feed under load."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from escrow import bootstrap
from escrow.api.app import create_app
from escrow.ports import ManualClock
from escrow.service.holds import expire_due
from escrow.settings import load_settings
from tests.conftest import TestDB
from tests.integration.checkout_support import an_order, assert_conserved
from tests.integration.conftest import Api


def pg_api(pg_db: TestDB) -> Api:
    settings = load_settings(database_url=pg_db.url, audit_seal_interval_ms=0, api_key_cache_ttl_ms=0)
    clock = ManualClock(datetime(2026, 11, 29, 12, tzinfo=UTC))
    parts = bootstrap.components(settings, clock=clock)
    return Api(TestClient(create_app(parts), raise_server_exceptions=False), parts, clock, pg_db)


def run_together(*jobs: Any) -> list[Any]:
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(i: int, job: Any) -> None:
        barrier.wait()
        try:
            results[i] = job()
        except BaseException as exc:  # kept and asserted on by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_release_confirm_and_expiry_race_on_one_order(pg_db: TestDB) -> None:
    """Releases, a confirmation and the expiry worker race on each of 12 orders; the books stay exact."""
    api = pg_api(pg_db)
    checkout, staff = api.key("checkout"), api.key("ip_staff")
    now = api.clock.now()
    for n in range(12):
        assert api.client.post("/v1/orders", json=an_order(n), headers=checkout).status_code == 201
        for amount, days in ((2_000, 1), (3_000, 30)):
            body = {"order_id": f"o-{n}", "amount": {"amount": amount, "currency": "EUR"}, "reason": "x",
                    "expires_at": (now + timedelta(days=days)).isoformat()}  # fmt: skip
            assert api.client.post("/v1/holds", json=body, headers=staff).status_code == 201
    api.clock.advance(timedelta(days=2))  # the first hold of every order is now due
    holds = api.client.get("/v1/holds?limit=200", headers=staff).json()["data"]
    by_order: dict[str, list[str]] = {}
    for h in holds:
        by_order.setdefault(h["order_id"], []).append(h["id"])
    statuses: list[int] = []
    for n in range(12):
        first, second = sorted(by_order[f"o-{n}"])
        results = run_together(
            lambda f=first: api.client.post(f"/v1/holds/{f}/release", json={"reason": "race"}, headers=staff),
            lambda s=second: api.client.post(
                f"/v1/holds/{s}/release",
                json={"amount": {"amount": 1_000, "currency": "EUR"}, "reason": "race"},
                headers=staff,
            ),
            lambda n=n: api.client.post(f"/v1/orders/o-{n}/confirm", headers=checkout),
            lambda: expire_due(api.parts.engine, api.clock.now()),
        )
        for r in results:
            assert not isinstance(r, BaseException), r
        statuses += [r.status_code for r in results[:3]]
    assert set(statuses) <= {200, 409}, statuses
    assert 500 not in statuses
    for n in range(12):
        order = api.client.get(f"/v1/orders/o-{n}", headers=checkout).json()
        assert order["status"] in {"confirmed", "closed"}
        first = sorted(order["holds"], key=lambda h: h["id"])[0]
        assert first["status"] in {"released", "expired"} and first["amount"]["amount"] == 0
    assert_conserved(api)
    api.client.close()
    api.parts.engine.dispose()


def test_event_feed_never_skips_or_repeats_under_concurrent_writers(pg_db: TestDB) -> None:
    """Eight writers commit orders while a reader pages with after=; it sees every event exactly once, in order."""
    api = pg_api(pg_db)
    checkout = api.key("checkout")
    done = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(25):
                r = api.client.post("/v1/orders", json=an_order(f"{w}-{i}"), headers=checkout)
                assert r.status_code == 201
        except BaseException as exc:  # asserted below
            errors.append(exc)

    def reader() -> None:
        after = ""
        try:
            while True:
                finished = done.is_set()
                page = api.client.get(f"/v1/events?limit=7{after}", headers=checkout).json()
                seen.extend(e["id"] for e in page["data"])
                if page["data"]:
                    after = f"&after={page['data'][-1]['id']}"
                if finished and not page["has_more"] and not page["data"]:
                    return
        except BaseException as exc:  # asserted below
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    read = threading.Thread(target=reader)
    read.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    read.join()
    assert errors == []
    assert len(seen) == len(set(seen)) == 200
    assert seen == sorted(seen)
    api.client.close()
    api.parts.engine.dispose()


def test_one_order_posted_by_eight_clients_at_once_is_booked_once(pg_db: TestDB) -> None:
    """The autocommitted one-statement intake: the unique order id lets exactly one insert through;
    every other client gets the same order back as a replay, and the money is booked once."""
    api = pg_api(pg_db)
    checkout = api.key("checkout")
    for n in range(5):
        results = run_together(*[lambda n=n: api.client.post("/v1/orders", json=an_order(n), headers=checkout)] * 8)
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * 7 + [201], [r.text for r in results]
        bodies = [r.json() for r in results]
        assert all(b == bodies[0] for b in bodies)
    assert pg_db.count("journal_entries") == 5
    assert pg_db.count("audit_records") == 5  # one per order
    assert_conserved(api)


def test_two_batches_of_the_same_orders_in_opposite_orders_do_not_deadlock(pg_db: TestDB) -> None:
    """A checkout that retries a batch while the first attempt still runs can send the same
    order ids in another order. Inserted in request order, each batch took ids the other then
    waited for: a deadlock (PostgreSQL breaks it after a second; the route then fell back to
    one order at a time). Made certain here: a third transaction holds the middle id, both
    batches insert up to it and wait, then it rolls back and both go on."""
    from escrow.audit import Actor
    from escrow.idempotency import fingerprint
    from escrow.money import Money
    from escrow.service.orders import NewOrder, record_orders_bulk
    from escrow.service.screening import Screening

    api = pg_api(pg_db)
    actor, now, policies = Actor("key_test", "checkout"), api.clock.now(), api.parts.settings.policies

    def order(i: int) -> tuple[NewOrder, Screening]:
        new = NewOrder(f"o-{i:02d}", "b", "s-1", f"l-{i}", "Leather wallet", Money(1000 + i, "EUR"),
                       "card", f"p-{i}", "EU", fingerprint("POST", "/v1/orders", {"i": i}))  # fmt: skip
        return new, Screening("pass")

    ids = list(range(21))
    with pg_db.engine.connect() as middle:
        held = middle.begin()
        record_orders_bulk(middle, actor, now, [order(10)], policies)

        def batch(order_ids: list[int]) -> int:
            with pg_db.engine.begin() as conn:
                return len(record_orders_bulk(conn, actor, now, [order(i) for i in order_ids], policies))

        def release_the_middle() -> None:
            time.sleep(0.5)  # both batches are waiting for the middle id by now
            held.rollback()

        results = run_together(lambda: batch(ids), lambda: batch(ids[::-1]), release_the_middle)
    assert results[:2] == [21, 21], results  # a DeadlockDetected here was the bug
    assert pg_db.count("orders") == pg_db.count("journal_entries") == 21
    assert_conserved(api)
