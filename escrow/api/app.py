"""The FastAPI application factory.

Every error leaves as `application/problem+json` from the handlers registered here:
domain errors by the table in problems.py, validation with an `errors` array, unknown
routes and wrong methods with their own codes, malformed JSON as 400.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from escrow import audit
from escrow.api.context import RequestContext
from escrow.api.deps import Components
from escrow.api.intake import OrderIntake
from escrow.api.problems import from_error, problem_body, problem_response
from escrow.api.routers import audit as audit_routes
from escrow.api.routers import events as event_routes
from escrow.api.routers import findings as finding_routes
from escrow.api.routers import holds as hold_routes
from escrow.api.routers import ledger as ledger_routes
from escrow.api.routers import orders as order_routes
from escrow.api.routers import parties as party_routes
from escrow.api.routers import payouts as payout_routes
from escrow.api.routers import refunds as refund_routes
from escrow.api.routers import sellers as seller_routes
from escrow.api.routers import system as system_routes
from escrow.api.routers import webhooks as webhook_routes
from escrow.errors import EscrowError

log = structlog.get_logger(__name__)

_BODY_NOT_PARSED = "There was an error parsing the body"  # FastAPI's 400 when a JSON body cannot be read
_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def _request_id(request: Request) -> str | None:
    request_id = request.scope.get("state", {}).get("request_id")
    return str(request_id) if request_id else None


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "body")


async def _on_escrow_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EscrowError)  # noqa: S101  # registered for EscrowError only
    return problem_response(from_error(exc, _request_id(request)))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101  # registered for this class only
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(
            problem_body(
                400, "malformed_json", "Malformed JSON", "the request body is not valid JSON", _request_id(request)
            )
        )
    details = [{"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", "invalid"))} for e in errors]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return problem_response(
        problem_body(422, "validation_failed", "Invalid request", summary, _request_id(request), errors=details)
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101  # registered for this class only
    if exc.status_code == 400 and exc.detail == _BODY_NOT_PARSED:  # JSON that is not UTF-8, say
        return problem_response(
            problem_body(
                400, "malformed_json", "Malformed JSON", "the body is not valid UTF-8 JSON", _request_id(request)
            ),
            headers=dict(exc.headers or {}),
        )
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    detail = (
        f"no route {request.method} {request.url.path}"
        if exc.status_code == 404
        else f"{request.method} is not allowed on {request.url.path}"
        if exc.status_code == 405
        else str(exc.detail)
    )
    headers = dict(exc.headers or {})
    body = problem_body(exc.status_code, code, code.replace("_", " ").capitalize(), detail, _request_id(request))
    return problem_response(body, headers=headers)


def _sealer(parts: Components, stop: threading.Event) -> None:
    """Seal committed audit records every interval, so the chain trails commits by < 1 s."""
    interval_s = parts.settings.audit_seal_interval_ms / 1000
    while not stop.wait(interval_s):
        try:
            audit.seal(parts.engine)
        except Exception:  # a failed round is retried next interval; never kill the API
            log.exception("audit_seal_failed")


def create_app(parts: Components) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        loops = list(parts.background)
        if parts.settings.audit_seal_interval_ms > 0:
            loops.append(lambda event: _sealer(parts, event))
        threads = [threading.Thread(target=loop, args=(stop,), daemon=True) for loop in loops]
        for thread in threads:
            thread.start()
        yield
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        if parts.statements is not None:
            await parts.statements.aclose()

    app = FastAPI(
        title="Escrow interception service",
        version="1",
        description="Screens paid orders, holds infringing proceeds, refunds buyers first. See DESIGN.md.",
        lifespan=lifespan,
        # Metrics are ours (Prometheus, see context.py); with no OpenTelemetry provider set up,
        # FastAPI's own telemetry only costs a check of three providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.components = parts
    app.add_middleware(OrderIntake, parts=parts)
    app.add_middleware(RequestContext)  # added last: the outermost, so it sees every request
    app.add_exception_handler(EscrowError, _on_escrow_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    # Matched in this order, one route after another: checkout's hot paths first.
    for module in (
        order_routes,
        hold_routes,
        system_routes,
        ledger_routes,
        audit_routes,
        seller_routes,
        event_routes,
        finding_routes,
        payout_routes,
        party_routes,
        webhook_routes,
        refund_routes,
    ):
        app.include_router(module.router)
    return app
