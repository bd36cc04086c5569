"""The intake fast lane (PostgreSQL): same answers as the route, and a safe fallback on any failure."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from escrow import bootstrap
from escrow.api.app import create_app
from escrow.api.intake import Coalescer, Intake
from escrow.api.routers.orders import OrderIn, new_order
from escrow.audit import Actor
from escrow.persistence.statements import NO_CONNECTION, SingleStatements, StatementFailed, numbered
from escrow.ports import ManualClock
from escrow.service.orders import COALESCED_SQL
from escrow.service.screening import Screening
from escrow.settings import load_settings
from tests.conftest import TestDB
from tests.integration.checkout_support import an_order, assert_conserved
from tests.integration.conftest import Api


class Spy(SingleStatements):
    """Counts statements; can fail before or after the statement ran, as a broken link would."""

    def __init__(self, inner: SingleStatements) -> None:
        self.__dict__.update(inner.__dict__)
        self.ran = 0
        self.sizes: list[int] = []  # orders per statement: 1, or the coalesced statement's rows
        self.fail: str | None = None  # "before" | "after"

    async def fetch(self, conn: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.fail == "before":
            await self._discard(conn)  # as `fetch` does with a connection that failed
            raise StatementFailed("ConnectionDoesNotExistError")
        rows = await super().fetch(conn, sql, params)
        self.ran += 1
        self.sizes.append(len(json.loads(params[0])) if sql == COALESCED_SQL else 1)
        if self.fail == "after":
            await self._discard(conn)
            raise StatementFailed("ConnectionDoesNotExistError")
        return rows


@pytest.fixture
def fast(pg_db: TestDB, request: pytest.FixtureRequest) -> Any:
    connections = getattr(request, "param", 2)
    settings = load_settings(
        database_url=pg_db.url, audit_seal_interval_ms=0, api_key_cache_ttl_ms=60_000, intake_connections=connections
    )
    parts = bootstrap.components(settings, clock=ManualClock(datetime(2026, 11, 29, 12, tzinfo=UTC)))
    assert parts.statements is not None
    spy = Spy(parts.statements)
    parts.statements = spy
    api = Api(TestClient(create_app(parts), raise_server_exceptions=False), parts, parts.clock, pg_db)  # type: ignore[arg-type]
    checkout = api.key("checkout")
    # The first request authenticates through the route and caches the key; the lane needs that.
    assert api.client.post("/v1/orders", json=an_order("warm"), headers=checkout).status_code == 201
    yield api, spy, checkout
    api.client.close()
    asyncio.run(spy.aclose())
    parts.engine.dispose()


def test_the_lane_answers_exactly_what_the_route_would(fast: Any) -> None:
    api, spy, checkout = fast
    first = api.client.post("/v1/orders", json=an_order(1), headers=checkout)
    assert first.status_code == 201 and spy.ran == 1
    assert first.headers["content-type"] == "application/json" and first.headers["x-request-id"]
    again = api.client.post("/v1/orders", json=an_order(1), headers=checkout)  # a replay: the route answers
    assert again.status_code == 200 and again.json() == first.json()
    got = api.client.get("/v1/orders/o-1", headers=checkout).json()
    assert got == first.json()
    other = api.client.post("/v1/orders", json=an_order(1, title="Another title"), headers=checkout)
    assert other.status_code == 409 and other.headers["content-type"] == "application/problem+json"
    assert api.db.count("journal_entries") == 2  # the warm-up order and o-1, once each
    assert_conserved(api)


def test_the_lane_writes_the_routes_headers_and_metrics(fast: Any) -> None:
    """Headers in the route's order, and the request counted under the route's template (it
    was counted as "unmatched", the label of requests no route takes)."""
    api, spy, checkout = fast

    def counted() -> float:
        sample = 'escrow_http_requests_total{method="POST",route="/v1/orders",status="201"} '
        lines = [x for x in api.client.get("/metrics").text.splitlines() if x.startswith(sample)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    before = counted()
    lane = api.client.post("/v1/orders", json=an_order(1), headers=checkout)
    assert lane.status_code == 201 and spy.ran == 1
    assert counted() == before + 1
    spy.fail = "before"  # the lane falls back: the route answers the next order
    route = api.client.post("/v1/orders", json=an_order(2), headers=checkout)
    assert route.status_code == 201 and spy.ran == 1
    assert [name for name, _ in lane.headers.raw] == [name for name, _ in route.headers.raw]
    assert counted() == before + 2


def test_what_the_lane_does_not_take_goes_to_the_route(fast: Any) -> None:
    api, spy, checkout = fast
    cases = [
        ({"Idempotency-Key": "k-1"}, an_order(2), 201),  # needs the key's record: the route
        ({}, {**an_order(3), "amount": {"amount": 1.5, "currency": "EUR"}}, 422),
        ({}, b"{not json", 400),
        ({"Authorization": "Bearer esk_key_0000000000000000_nope"}, an_order(4), 401),
    ]
    for extra, body, status in cases:
        headers = {**checkout, **extra, "Content-Type": "application/json"}
        content = body if isinstance(body, bytes) else None
        response = api.client.post("/v1/orders", json=None if content else body, content=content, headers=headers)
        assert response.status_code == status, response.text
    staff = api.key("ip_staff")
    assert api.client.post("/v1/orders", json=an_order(5), headers=staff).status_code == 403
    # A body over the lane's buffer (valid JSON, padded) is read by the route, under its limit.
    padded = json.dumps(an_order(6)).encode()[:-1] + b" " * 70_000 + b"}"
    large = api.client.post("/v1/orders", content=padded, headers={**checkout, "Content-Type": "application/json"})
    assert large.status_code == 201, large.text
    assert spy.ran == 0
    assert api.db.count("orders") == 3  # the warm-up order, the keyed one and the padded one
    assert_conserved(api)


@pytest.mark.parametrize("content_type", ["text/csv", "application/xml", "multipart/form-data", "application/a/b+json"])
def test_a_body_not_sent_as_json_is_refused_as_the_route_refuses_it(fast: Any, content_type: str) -> None:
    """The route parses only a JSON media type as JSON; the lane must not book a JSON body
    sent as an upload type (or as a type FastAPI does not read as JSON)."""
    api, spy, checkout = fast
    body = json.dumps(an_order(7)).encode()
    response = api.client.post("/v1/orders", content=body, headers={**checkout, "Content-Type": content_type})
    assert response.status_code in (415, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert spy.ran == 0 and api.db.count("orders") == 1  # the warm-up order only
    assert_conserved(api)


def test_a_repeated_authorization_header_is_read_as_the_route_reads_it(fast: Any) -> None:
    """The first Authorization counts, on the lane as in the route: a checkout key sent after
    another role's key does not make the request a checkout's."""
    api, spy, checkout = fast
    staff = api.key("ip_staff")["Authorization"]
    assert api.client.post("/v1/orders", json=an_order(8), headers={"Authorization": staff}).status_code == 403
    headers = [("Authorization", staff), ("Authorization", checkout["Authorization"])]  # both keys now cached
    response = api.client.post("/v1/orders", json=an_order(8), headers=headers)
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    reversed_ = api.client.post("/v1/orders", json=an_order(9), headers=headers[::-1])
    assert reversed_.status_code == 201 and spy.ran == 1
    assert api.db.count("orders") == 2  # the warm-up order and o-9
    assert_conserved(api)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_broken_connection_falls_back_and_books_the_order_once(fast: Any, when: str) -> None:
    """Before: nothing ran, the route records the order (201). After: the statement committed and
    only its answer was lost; the route finds the order and answers it as a replay (200)."""
    api, spy, checkout = fast
    spy.fail = when
    response = api.client.post("/v1/orders", json=an_order(6), headers=checkout)
    assert response.status_code == (201 if when == "before" else 200), response.text
    assert response.json()["balances"]["escrowed"] == 10_000
    assert api.db.count("journal_entries") == 2
    assert_conserved(api)


def post_together(api: Api, bodies: list[dict[str, Any]], headers: dict[str, str]) -> list[httpx.Response]:
    """The bodies posted concurrently on ONE event loop, as a server's requests arrive."""

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return list(await asyncio.gather(*(client.post("/v1/orders", json=b, headers=headers) for b in bodies)))

    return asyncio.run(scenario())


@pytest.mark.parametrize("fast", [1], indirect=True)
def test_orders_that_arrive_together_share_a_statement_and_each_is_its_own(fast: Any) -> None:
    """With one connection, the orders that queue behind the first are recorded by one
    statement; each still gets its own order, entry, audit record (with its request id) and
    event, exactly what it would have got alone."""
    api, spy, checkout = fast
    bodies = [an_order(n, amount={"amount": 1_000 + n, "currency": "EUR" if n % 3 else "USD"},
                       payment={"method": "card" if n % 2 else "bank_transfer", "reference": f"p-{n}"})
              for n in range(1, 25)]  # fmt: skip
    answers = post_together(api, bodies, checkout)
    assert [a.status_code for a in answers] == [201] * len(bodies), [a.text for a in answers]
    assert sum(spy.sizes) == len(bodies) and max(spy.sizes) > 1 and spy.ran < len(bodies)
    for body, answer in zip(bodies, answers, strict=True):
        view = answer.json()
        assert view["order_id"] == body["order_id"] and view["amount"] == body["amount"]
        assert view["balances"]["escrowed"] == body["amount"]["amount"]
        assert api.client.get(f"/v1/orders/{body['order_id']}", headers=checkout).json() == view
    with api.parts.engine.connect() as conn:
        audit = dict(conn.execute(text("SELECT object_id, request_id FROM audit_records"
                                       " WHERE action = 'order.recorded'")).all())  # fmt: skip
        events = conn.execute(text("SELECT data FROM events WHERE type = 'order.screened'")).scalars().all()
    for body, answer in zip(bodies, answers, strict=True):
        assert audit[body["order_id"]] == answer.headers["x-request-id"]
    assert sorted(e["order_id"] for e in events) == sorted(["o-warm"] + [b["order_id"] for b in bodies])
    assert api.db.count("journal_entries") == len(bodies) + 1
    assert api.db.count("postings") == 2 * (len(bodies) + 1)
    assert_conserved(api)


@pytest.mark.parametrize("fast", [1], indirect=True)
def test_a_repeated_order_id_in_a_crowd_is_booked_once(fast: Any) -> None:
    """The same id three times (twice the same body, once another) among new orders, and a
    replay of an order already booked: one booking per id; the rest are replays or conflicts."""
    api, spy, checkout = fast
    bodies = [an_order(1), an_order(2), an_order(1), an_order(3), an_order(1, title="Another"), an_order("warm")]
    answers = post_together(api, bodies, checkout)
    statuses = [a.status_code for a in answers]
    assert statuses[1] == statuses[3] == 201 and statuses[5] == 200
    assert max(spy.sizes) > 1  # the lane took the crowd, not the route
    ones = sorted(statuses[i] for i in (0, 2, 4))
    assert ones in ([200, 201, 409], [201, 409, 409]), ones  # the first booked decides which body is the order's
    booked = api.client.get("/v1/orders/o-1", headers=checkout).json()
    for i in (0, 2, 4):
        if statuses[i] != 409:
            assert answers[i].json() == booked
    assert api.db.count("journal_entries") == 4  # o-warm, o-1, o-2, o-3 once each
    assert_conserved(api)


@pytest.mark.parametrize("fast", [1], indirect=True)
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_shared_statement_that_fails_sends_each_order_to_the_route(fast: Any, when: str) -> None:
    api, spy, checkout = fast
    spy.fail = when
    bodies = [an_order(n) for n in range(1, 9)]
    answers = post_together(api, bodies, checkout)
    assert [a.status_code for a in answers] == [201 if when == "before" else 200] * len(bodies)
    assert api.db.count("journal_entries") == len(bodies) + 1
    assert_conserved(api)


def test_an_order_whose_request_has_gone_is_not_recorded(pg_db: TestDB) -> None:
    """Queued behind a statement, a request that is cancelled (its client went away) is taken
    out of the queue; the others queued with it are recorded."""
    settings = load_settings(database_url=pg_db.url, intake_connections=1)
    parts = bootstrap.components(settings, clock=ManualClock(datetime(2026, 11, 29, 12, tzinfo=UTC)))
    assert parts.statements is not None
    gate = asyncio.Event()

    class Held(Spy):
        async def fetch(self, conn: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            await gate.wait()
            return await super().fetch(conn, sql, params)

    statements = Held(parts.statements)
    coalescer = Coalescer(statements)
    actor = Actor("key_test", "checkout", request_id="req_test")

    def intake(n: int) -> Intake:
        body = OrderIn.model_validate(an_order(n))
        return Intake(actor, parts.clock.now(), new_order(body), Screening("pass"))

    async def scenario() -> list[Any]:
        first = asyncio.create_task(coalescer.record(intake(1)))
        await asyncio.sleep(0.05)  # the first statement runs (held at the gate)
        gone = asyncio.create_task(coalescer.record(intake(2)))
        kept = asyncio.create_task(coalescer.record(intake(3)))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        outcomes = [await first, await kept]
        await statements.aclose()
        return outcomes

    try:
        outcomes = asyncio.run(scenario())
        assert [o[0] for o in outcomes] == [201, 201]  # type: ignore[index]
        assert statements.sizes == [1, 1]
        with parts.engine.connect() as conn:
            assert conn.execute(text("SELECT order_id FROM orders ORDER BY 1")).scalars().all() == ["o-1", "o-3"]
    finally:
        parts.engine.dispose()


def test_a_link_that_breaks_after_its_statement_does_not_use_up_a_connection(pg_db: TestDB) -> None:
    """The server ends the connection just after a statement succeeded (a restart, an idle
    kill): the runner must give its slot back, or the lane is closed for good."""
    settings = load_settings(database_url=pg_db.url, intake_connections=1)
    parts = bootstrap.components(settings, clock=ManualClock(datetime(2026, 11, 29, 12, tzinfo=UTC)))
    assert parts.statements is not None
    admin_url = pg_db.url.replace("+psycopg", "")

    class Breaks(Spy):
        cut = True

        async def fetch(self, conn: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            rows = await super().fetch(conn, sql, params)
            if self.cut:
                self.cut = False
                with psycopg.connect(admin_url, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (conn.get_server_pid(),))
                for _ in range(100):  # the client notices the link is gone
                    if conn.is_closed():
                        break
                    await asyncio.sleep(0.01)
            return rows

    statements = Breaks(parts.statements)
    coalescer = Coalescer(statements)
    actor = Actor("key_test", "checkout", request_id="req_test")

    def intake(n: int) -> Intake:
        return Intake(actor, parts.clock.now(), new_order(OrderIn.model_validate(an_order(n))), Screening("pass"))

    async def scenario() -> list[Any]:
        first = await coalescer.record(intake(1))  # recorded; then the link breaks
        second = await coalescer.record(intake(2))  # a fresh connection must record this one
        await statements.aclose()
        return [first, second]

    try:
        outcomes = asyncio.run(scenario())
        assert outcomes[0] is not None and outcomes[0][0] == 201
        assert outcomes[1] is not None and outcomes[1][0] == 201, "the lane lost its only connection slot"
        assert statements._open == 0
    finally:
        parts.engine.dispose()


def test_a_full_lane_says_so_instead_of_waiting(pg_db: TestDB) -> None:
    """With every connection busy, execute answers NO_CONNECTION at once; a dead one is replaced."""
    lane = SingleStatements(pg_db.engine.url, size=1)

    async def scenario() -> None:
        slow = asyncio.create_task(lane.execute("SELECT pg_sleep(0.3), 1", ()))
        await asyncio.sleep(0.1)
        assert await lane.execute("SELECT 1", ()) is NO_CONNECTION
        assert (await slow)[1] == 1  # type: ignore[index]
        pid = (await lane.execute("SELECT pg_backend_pid()", ()))[0]  # type: ignore[index]
        with psycopg.connect(pg_db.url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StatementFailed):
            await lane.execute("SELECT 1", ())
        assert await lane.execute("SELECT 2", ()) == (2,)
        await lane.aclose()
        assert await lane.execute("SELECT 3", ()) is NO_CONNECTION

    asyncio.run(scenario())


def test_a_connection_serves_only_the_loop_that_opened_it(pg_db: TestDB) -> None:
    """A test client runs each request on a loop of its own: one that ended leaves no connection behind."""
    lane = SingleStatements(pg_db.engine.url, size=1)
    pids = [asyncio.run(lane.execute("SELECT pg_backend_pid()", ()))[0] for _ in range(3)]  # type: ignore[index]
    assert len(set(pids)) == 3  # a fresh connection for every loop, and the one slot was freed each time

    async def same_loop() -> list[int]:
        found = [(await lane.execute("SELECT pg_backend_pid()", ()))[0] for _ in range(3)]  # type: ignore[index]
        await lane.aclose()
        return found

    assert len(set(asyncio.run(same_loop()))) == 1  # within one loop the connection is reused


def test_statements_keep_psycopg_placeholders() -> None:
    assert numbered("SELECT %s, %s::json WHERE a LIKE 'x%%'") == "SELECT $1, $2::json WHERE a LIKE 'x%'"
    with pytest.raises(ValueError, match="lone %"):
        numbered("SELECT 5 % 2")
