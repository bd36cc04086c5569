"""FastAPI dependencies: the app's components, authentication, roles, and `Operation`.

`Operation.run` is the one way a state-changing endpoint touches the database: it claims
the Idempotency-Key, runs the use case in one transaction together with the stored
response, and turns refusals into stored problem responses. Endpoints stay thin.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import orjson
import structlog
from fastapi import Depends, Request
from pydantic import BaseModel
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from escrow import idempotency
from escrow.api.problems import from_error, problem_response
from escrow.audit import Actor
from escrow.auth import Authenticator, Principal, Role
from escrow.errors import EscrowError, Forbidden, NotFound
from escrow.outbox import Rails
from escrow.persistence.db import single_statement, transaction
from escrow.persistence.statements import SingleStatements
from escrow.ports import Clock
from escrow.service.screening import PassScreener, Screener
from escrow.settings import Settings

JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=JSON_OPTIONS)


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(value), status_code=status, media_type="application/json", headers=headers)


@dataclass
class Components:
    """What the endpoints need, built once by the app factory (the composition root).

    `background` are loops the API process runs beside the requests (each gets a stop
    event and must return soon after it is set).
    """

    settings: Settings
    engine: Engine
    clock: Clock
    authenticator: Authenticator
    screener: Screener = field(default_factory=PassScreener)
    rails: Rails | None = None  # bank and card rails, their readers and the account cipher
    statements: SingleStatements | None = None  # PostgreSQL: the one-statement fast lane of intake
    background: list[Callable[[threading.Event], None]] = field(default_factory=list)


def parts_of(request: Request) -> Components:
    return request.app.state.components  # type: ignore[no-any-return]


async def components(request: Request) -> Components:
    """The dependency; async although it does no I/O: FastAPI runs a sync one in the thread pool."""
    return parts_of(request)


async def authenticated(request: Request) -> Principal:
    """The caller, from `Authorization: Bearer …`; 401 otherwise.

    Async on purpose: context bound here reaches the endpoint's worker thread, so every log
    line of the request names the principal. The lookup itself runs in the thread pool.
    """
    auth = parts_of(request).authenticator
    header = request.headers.get("authorization")
    principal = auth.cached(header)
    if principal is None:
        principal = await run_in_threadpool(auth.authenticate, header)
    request.scope["state"]["principal"] = principal.key_id
    structlog.contextvars.bind_contextvars(principal=principal.key_id, role=principal.role.value)
    return principal


def require(*roles: Role) -> Callable[..., Any]:
    """A dependency that admits only `roles` (403 for any other authenticated caller)."""
    allowed = frozenset(roles)

    async def dependency(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(
                f"role {principal.role.value} may not do this; allowed: {', '.join(sorted(r.value for r in allowed))}"
            )
        return principal

    return dependency


def visible(principal: Principal, owner_party_id: str | None, what: str) -> None:
    """Party scope: another party's object answers 404, exactly as if it did not exist."""
    if not principal.owns(owner_party_id):
        raise NotFound(f"{what} not found")


Work = Callable[[Connection, Actor, datetime], tuple[int, Any]]


class Operation:
    """One state change: idempotency, one transaction, the stored response."""

    def __init__(self, request: Request, principal: Principal) -> None:
        self.request = request
        self.principal = principal
        self.parts = parts_of(request)
        self.actor = Actor(
            principal_id=principal.key_id,
            role=principal.role.value,
            party_id=principal.party_id,
            request_id=request.scope["state"].get("request_id"),
        )

    def run(self, payload: BaseModel | dict[str, Any] | None, work: Work) -> Response:
        engine = self.parts.engine
        now = self.parts.clock.now()
        key = self.request.headers.get("idempotency-key")
        claim: idempotency.Claim | None = None
        if key is not None:
            # Parsed, not raw: key order, whitespace and explicit nulls do not change the request.
            body = payload.model_dump(mode="json", exclude_none=True) if isinstance(payload, BaseModel) else payload
            outcome = idempotency.claim(
                engine,
                self.principal.key_id,
                key,
                idempotency.fingerprint(self.request.method, self.request.url.path, body),
                now,
            )
            if isinstance(outcome, idempotency.StoredResponse):
                media = "application/problem+json" if outcome.status >= 400 else "application/json"
                return Response(
                    outcome.body.encode(),
                    status_code=outcome.status,
                    media_type=media,
                    headers={"Idempotent-Replayed": "true"},
                )
            claim = outcome

        def in_transaction(conn: Connection) -> tuple[int, bytes]:
            status, result = work(conn, self.actor, now)
            encoded = dumps(result)
            if claim is not None:
                idempotency.complete(conn, claim, status, encoded.decode())
            return status, encoded

        try:
            status, encoded = transaction(engine, in_transaction)
        except EscrowError as exc:
            if claim is not None:
                problem = from_error(exc, self.actor.request_id)
                idempotency.complete_failed(engine, claim, int(problem["status"]), dumps(problem).decode())
                return problem_response(problem)
            raise
        except BaseException:
            if claim is not None:
                idempotency.release(engine, claim)
            raise
        return Response(encoded, status_code=status, media_type="application/json")

    def run_statement(self, work: Callable[[Any, Actor, datetime], tuple[int, Any] | None]) -> Response | None:
        """Try `work` as one autocommitted statement (PostgreSQL; see `single_statement`).

        `work` gets the driver's connection. Returns None, having written nothing, when this
        cannot answer: on SQLite, when an Idempotency-Key must be claimed and completed beside
        the change (more statements), or when `work` itself returns None (say, the object
        exists: a replay or conflict to decide in a transaction). The caller then uses `run`.
        """
        engine = self.parts.engine
        if engine.dialect.name != "postgresql" or self.request.headers.get("idempotency-key") is not None:
            return None
        now = self.parts.clock.now()
        outcome = single_statement(engine, lambda conn: work(conn, self.actor, now))
        if outcome is None:
            return None
        status, result = outcome
        return Response(dumps(result), status_code=status, media_type="application/json")


def operation_for(*roles: Role) -> Callable[..., Any]:
    guard = require(*roles)

    # A default, not Annotated: `guard` is local, and string annotations resolve globally.
    # Async although it does no I/O: a sync dependency costs a hop to the thread pool.
    async def dependency(request: Request, principal: Principal = Depends(guard)) -> Operation:  # noqa: B008
        return Operation(request, principal)

    return dependency
