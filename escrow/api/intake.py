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
"""

from __future__ import annotations

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
from escrow.limits import INTAKE_FAST_BODY_BYTES_MAX
from escrow.persistence.statements import NO_CONNECTION, StatementFailed
from escrow.service.orders import IntakeStatement, intake_statement, passing_order_answer

_PATH = "/v1/orders"
log = structlog.get_logger(__name__)


class OrderIntake:
    """Pure ASGI wrapper of the FastAPI app; see the module docstring."""

    def __init__(self, app: ASGIApp, parts: Components) -> None:
        self.app = app
        self.parts = parts
        self.enabled = parts.statements is not None

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
        statement = intake_statement(actor, now, order, screening)
        counts = await self._execute(statement)
        if counts is None:
            return None
        try:
            outcome = passing_order_answer(order, screening, now, *counts, statement.balance_rows)
        except EscrowError as exc:
            problem = from_error(exc, actor.request_id)
            return int(problem["status"]), dumps(problem), PROBLEM_JSON.encode()
        if outcome is None:
            return None  # the order id exists: a replay or a conflict, decided in a transaction
        status, view = outcome
        return status, dumps(view), b"application/json"

    async def _execute(self, statement: IntakeStatement) -> tuple[int, int] | None:
        """(inserted, moved), or None when the fast lane cannot run it (busy, or a failure).

        A failure leaves nothing to undo: the statement is atomic, and if it committed just
        before a connection broke, the ordinary path finds the order and answers a replay.
        """
        statements = self.parts.statements
        if statements is None:
            return None
        try:
            row = await statements.execute(statement.sql, statement.params)
        except StatementFailed as exc:
            log.warning("intake_fast_lane_failed", error=str(exc))
            return None
        if row is NO_CONNECTION:
            return None
        inserted, moved = row if isinstance(row, tuple) else (0, 0)
        return int(inserted), int(moved)


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
