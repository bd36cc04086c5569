"""The checkout's hot path: `POST /v1/orders` for the common case, beside FastAPI's routing.

Why: order intake is the one endpoint every paid order calls, and on a small machine the
framework's per-request work (routing over every route, dependency resolution, exception
and exit-stack middleware, a second hop to the thread pool) cost more CPU than the order
itself. This ASGI layer answers the common case directly: a key already verified and
cached, the checkout or admin role, no Idempotency-Key, a body the endpoint's own model
accepts, a title screening passes, PostgreSQL, and an order id not seen before. It uses
the same model, screener and service function as the FastAPI route, so the answer is
byte for byte the one the route would give.

Everything else (a key to look up, a wrong role, bad JSON or an invalid body, a hold, a
replay or a conflict, SQLite) goes to the FastAPI app with the body replayed, having
written nothing, and is answered there: the route stays the one definition of the
endpoint's behaviour, its errors and its OpenAPI entry.

Under load, the orders that arrive while the lane's few connections are busy are recorded
together, one statement for all of them (`Coalescer`); each is still all or nothing.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from escrow.api.context import is_json_media
from escrow.api.deps import Components, dumps
from escrow.api.problems import PROBLEM_JSON, from_error
from escrow.api.routers.orders import INTAKE_ROLES, OrderIn, new_order, screen
from escrow.audit import Actor
from escrow.errors import EscrowError, Unauthenticated
from escrow.limits import INTAKE_COALESCE_MAX, INTAKE_FAST_BODY_BYTES_MAX
from escrow.persistence.statements import SingleStatements, StatementFailed
from escrow.service.orders import NewOrder, coalesced_statement, intake_statement, passing_order_answer
from escrow.service.screening import Screening

_PATH = "/v1/orders"
log = structlog.get_logger(__name__)


class OrderIntake:
    """Pure ASGI wrapper of the FastAPI app; see the module docstring."""

    def __init__(self, app: ASGIApp, parts: Components) -> None:
        self.app = app
        self.parts = parts
        self.enabled = parts.statements is not None
        self.coalescer = None if parts.statements is None else Coalescer(parts.statements)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            self.enabled
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == _PATH
            and _declared_small(scope)
        ):
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        answer = None if more is not None else await self._try(scope, body)
        if answer is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        status, payload, media = answer
        scope.setdefault("state", {})["route"] = _PATH  # the metrics and log line name the route answered for
        # In the order Starlette's Response writes them.
        headers = [(b"content-length", str(len(payload)).encode()), (b"content-type", media)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _try(self, scope: Scope, body: bytes) -> tuple[int, bytes, bytes] | None:
        """The answer, or None to let the FastAPI route answer (nothing was written)."""
        # The first of a repeated header, as Starlette's `headers.get` (the route's reader) takes it.
        authorization = content_type = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"content-type":
                if content_type is None:
                    content_type = value.decode("latin-1")
            elif name == b"idempotency-key":
                return None
        if not is_json_media(content_type):
            return None  # the route reads only a JSON body as JSON; an upload type is its 422
        try:
            principal = self.parts.authenticator.cached(authorization)
        except Unauthenticated:
            return None  # the route answers 401 with its own problem
        if principal is None or principal.role not in INTAKE_ROLES:
            return None
        try:
            order_in = OrderIn.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError, TypeError):
            return None  # the route answers 400 or 422 with its own problem
        screening = screen(self.parts, order_in)
        if screening.decision != "pass":
            return None
        state = scope.setdefault("state", {})
        state["principal"] = principal.key_id
        structlog.contextvars.bind_contextvars(principal=principal.key_id, role=principal.role.value)
        actor = Actor(principal.key_id, principal.role.value, principal.party_id, state.get("request_id"))
        order = new_order(order_in)
        now = self.parts.clock.now()
        if self.coalescer is None:
            return None
        outcome = await self.coalescer.record(Intake(actor, now, order, screening))
        if isinstance(outcome, EscrowError):
            problem = from_error(outcome, actor.request_id)
            return int(problem["status"]), dumps(problem), PROBLEM_JSON.encode()
        if outcome is None:
            return None  # not recorded here (an existing order id, or the lane failed): the route decides
        status, view = outcome
        return status, dumps(view), b"application/json"


# The lane's answer to one order: the response, the problem to answer, or None when the
# route must answer (the order id exists, or the lane could not run the statement; nothing
# was written by the lane either way).
Outcome = tuple[int, dict[str, Any]] | EscrowError | None


@dataclass(slots=True)
class Intake:
    """One passing order waiting for the lane; `done` is set to its outcome once."""

    actor: Actor
    now: datetime
    order: NewOrder
    screening: Screening
    done: asyncio.Future[Outcome] = field(init=False)


@dataclass(slots=True)
class _Queue:
    waiting: deque[Intake] = field(default_factory=deque)
    runners: int = 0  # tasks of this loop holding, or getting, a connection
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Coalescer:
    """Runs passing orders through the fast lane's few connections, several per statement
    when they arrive faster than one statement at a time can record them.

    Why: on two cores the database's per-statement work (a commit, its WAL flush, the
    executor's start-up) costs as much CPU as the API's whole request; one statement for
    the orders that arrived while the previous one ran spreads that over all of them. An
    order that arrives when a connection is idle goes at once, alone, in the one-order
    statement: nothing waits to fill a batch, so coalescing adds no latency at low load.

    Each order stays atomic: the statement records all of its orders or none. If it fails,
    each of its requests takes the route (nothing written, or, if it committed just before
    the link broke, the route finds the order and answers a replay). A repeated order id
    never joins a statement that already holds it: that request takes the route, which
    decides replay or conflict in a transaction. A request that has gone (its task
    cancelled) before its statement ran is dropped from the queue, unrecorded.
    """

    def __init__(self, statements: SingleStatements, most: int = INTAKE_COALESCE_MAX) -> None:
        self.statements = statements
        self.most = most
        self._queues: dict[asyncio.AbstractEventLoop, _Queue] = {}
        self._lock = threading.Lock()  # a test client's loops run on threads of their own

    async def record(self, intake: Intake) -> Outcome:
        loop = asyncio.get_running_loop()
        queue = self._queue(loop)
        intake.done = loop.create_future()
        queue.waiting.append(intake)
        if queue.runners < self.statements.size:
            queue.runners += 1
            task = loop.create_task(self._run(queue))
            queue.tasks.add(task)  # a reference, until it ends
            task.add_done_callback(queue.tasks.discard)
        return await intake.done

    def _queue(self, loop: asyncio.AbstractEventLoop) -> _Queue:
        with self._lock:
            queue = self._queues.get(loop)
            if queue is None:
                for old in [old for old in self._queues if old.is_closed()]:
                    del self._queues[old]
                queue = self._queues[loop] = _Queue()
            return queue

    async def _run(self, queue: _Queue) -> None:
        """Take the waiting orders, up to `most` a statement, until none wait.

        Between the last look at the queue and leaving, nothing is awaited: an order queued
        meanwhile on this loop always finds this runner still counted or a new one started.
        """
        conn = None
        try:
            while queue.waiting:
                if conn is None:
                    try:
                        conn = await self.statements.acquire()
                    except StatementFailed as exc:
                        log.warning("intake_fast_lane_failed", error=str(exc))
                    if conn is None:
                        break  # every connection is taken (by another loop) or cannot be had
                batch = self._take(queue)
                if not batch:
                    continue
                answers: list[Outcome] = [None] * len(batch)  # unless the statement answers: the route
                try:
                    answers = await self._execute(conn, batch)
                except StatementFailed as exc:
                    conn = None  # `fetch` closed it and freed its slot
                    log.warning("intake_fast_lane_failed", error=str(exc), orders=len(batch))
                except Exception:  # a bug outside `fetch`: the route answers these orders; the lane goes on
                    log.exception("intake_fast_lane_error", orders=len(batch))
                except BaseException:  # cancelled: `fetch`, the only await there, closed the connection
                    conn = None
                    raise
                finally:
                    _settle(batch, answers)
        finally:
            if conn is not None:
                self.statements.release(conn)
            queue.runners -= 1
            if queue.runners == 0:
                # No runner left to take them (no connection could be had): the route answers.
                _settle(list(queue.waiting), [None] * len(queue.waiting))
                queue.waiting.clear()

    def _take(self, queue: _Queue) -> list[Intake]:
        """Up to `most` waiting orders with distinct ids; a repeated id takes the route."""
        batch: list[Intake] = []
        ids: set[str] = set()
        while queue.waiting and len(batch) < self.most:
            intake = queue.waiting.popleft()
            if intake.done.done():  # its request has gone
                continue
            if intake.order.order_id in ids:
                intake.done.set_result(None)
                continue
            ids.add(intake.order.order_id)
            batch.append(intake)
        return batch

    async def _execute(self, conn: Any, batch: list[Intake]) -> list[Outcome]:
        """One statement for `batch`: the one-order statement alone, else the coalesced one."""
        if len(batch) == 1:
            one = batch[0]
            statement = intake_statement(one.actor, one.now, one.order, one.screening)
            rows = await self.statements.fetch(conn, statement.sql, statement.params)
            inserted, moved = (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)
            return [_outcome(one, inserted, moved, statement.balance_rows)]
        coalesced = coalesced_statement([(i.actor, i.now, i.order, i.screening) for i in batch])
        rows = await self.statements.fetch(conn, coalesced.sql, coalesced.params)
        try:
            recorded = coalesced.inserted(rows)
        except EscrowError as exc:  # pragma: no cover  # an inflow credits only
            return [exc] * len(batch)
        return [_outcome(i, int(i.order.order_id in recorded), 1, 1) for i in batch]


def _settle(batch: list[Intake], answers: list[Outcome]) -> None:
    for intake, answer in zip(batch, answers, strict=True):
        if not intake.done.done():  # not gone meanwhile
            intake.done.set_result(answer)


def _outcome(intake: Intake, inserted: int, moved: int, balance_rows: int) -> Outcome:
    try:
        return passing_order_answer(intake.order, intake.screening, intake.now, inserted, moved, balance_rows)
    except EscrowError as exc:  # pragma: no cover  # an inflow credits only
        return exc


def _declared_small(scope: Scope) -> bool:
    """Whether the body declares a length the lane may buffer; any other body (chunked, or
    large) goes straight to the route, whose body limit applies as it reads."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.isdigit() and int(value) <= INTAKE_FAST_BODY_BYTES_MAX
    return False


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The whole body, or what was read and the message that ended it early (a disconnect)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, ended: Message | None, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body (or its early end) to the next app once."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return ended if ended is not None else {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
