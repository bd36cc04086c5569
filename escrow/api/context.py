"""Per-request context: request id, structured access log, metrics, last-resort 500.

A pure ASGI middleware (not BaseHTTPMiddleware, which costs a task per request). The
request id comes from a well-formed `X-Request-Id` or is made here; it is returned in the
same header and bound to every log line of the request. The principal is put in the scope
state by the auth dependency so the access log can name it. A body that is not JSON (or
one of the upload types) is refused with 415 before any endpoint parses it.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

import orjson
import structlog
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from escrow.api.problems import PROBLEM_JSON, echoed, internal_error, problem_body
from escrow.limits import REQUEST_BODY_BYTES_MAX

log = structlog.get_logger("escrow.http")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Metric labels take these methods by name and any other as "other": a method is the
# client's to invent, and every distinct label value is a new series kept forever.
_METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UPLOAD_TYPES = frozenset({"multipart/form-data", "application/xml", "text/xml", "text/csv"})

REQUESTS = Counter("escrow_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "escrow_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


@functools.lru_cache(maxsize=1024)  # routes x methods x statuses: a bounded set
def _count(method: str, route: str, status: int) -> Any:
    """The labelled counter (`labels()` hashes and locks on every call; children never change)."""
    return REQUESTS.labels(method, route, str(status))


@functools.lru_cache(maxsize=512)
def _latency(method: str, route: str) -> Any:
    return LATENCY.labels(method, route)


def _too_large(request_id: str) -> dict[str, Any]:
    detail = f"the request body exceeds {REQUEST_BODY_BYTES_MAX} bytes"
    return problem_body(413, "payload_too_large", "Payload too large", detail, request_id)


def _header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), "")


def _unsupported_media_type(scope: Scope) -> str | None:
    """The offending content type of a body that is neither JSON nor an upload type."""
    if scope["method"] not in _BODY_METHODS:
        return None
    length = _header(scope, b"content-length")
    if length in ("", "0") and not _header(scope, b"transfer-encoding"):
        return None
    content_type = _header(scope, b"content-type")
    if is_json_media(content_type):
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    return None if media in _UPLOAD_TYPES else (media or "(none)")


def _nul_in_url(scope: Scope) -> str | None:
    """The path or query parameter holding a NUL (`%00`), if any.

    No text this service stores or looks up may hold NUL (PostgreSQL text cannot), so it is
    refused here for every route at once, as NO_NUL refuses it in bodies.
    """
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return echoed(name.replace("\x00", "\\x00")) or "query"
    return "query"


def is_json_media(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this type as JSON: application/json or application/*+json,
    read as it reads it (the standard library's email parsing: one slash, parameters after `;`)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    if media.count("/") != 1:
        return False
    main, sub = media.split("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else "req_" + secrets.token_hex(12)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "sent": False}

        received = 0
        cut_off = False

        async def emit(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        async def send_problem(body: dict[str, Any]) -> None:
            await emit(
                {
                    "type": "http.response.start",
                    "status": body["status"],
                    "headers": [(b"content-type", PROBLEM_JSON.encode())],
                }
            )
            await send({"type": "http.response.body", "body": orjson.dumps(body)})

        async def send_with_id(message: Message) -> None:
            if cut_off:  # whatever the app answers to a body cut off at the limit, it is a 413
                if message["type"] == "http.response.start" and not status["sent"]:
                    await send_problem(_too_large(request_id))
                return
            await emit(message)

        async def limited() -> Message:
            # A body without Content-Length is counted as it arrives; past the limit the app is
            # told the client went away, so it stops reading, and the answer is a 413 problem.
            nonlocal received, cut_off
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > REQUEST_BODY_BYTES_MAX:
                    cut_off = True
                    return {"type": "http.disconnect"}
            return message

        try:
            media = _unsupported_media_type(scope)
            declared = _header(scope, b"content-length")
            nul = _nul_in_url(scope)
            if declared.isascii() and declared.isdigit() and int(declared) > REQUEST_BODY_BYTES_MAX:
                await send_problem(_too_large(request_id))
            elif nul is not None:
                message = "must not contain NUL (%00)"
                await send_problem(
                    problem_body(
                        422,
                        "validation_failed",
                        "Invalid request",
                        f"{nul}: {message}",
                        request_id,
                        errors=[{"field": nul, "message": message}],
                    )
                )
            elif media is not None:
                await send_problem(
                    problem_body(
                        415,
                        "unsupported_media_type",
                        "Unsupported media type",
                        f"send the body as application/json, not {media}",
                        request_id,
                    )
                )
            else:
                await self.app(scope, limited, send_with_id)
        except Exception:
            if cut_off:  # the body outgrew the limit while being read: the app saw a disconnect
                if not status["sent"]:
                    await send_problem(_too_large(request_id))
            else:
                log.exception("request_failed", method=scope["method"], path=scope["path"])
                if not status["sent"]:
                    await send_problem(internal_error(request_id))
        finally:
            # The matched route's template; a layer that answers before routing (the intake
            # fast lane) names the route it answered for in the state.
            route = scope.get("route")
            template = getattr(route, "path", None) or state.get("route") or "unmatched"
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METRIC_METHODS else "other"
            _count(method, template, status["code"]).inc()
            _latency(method, template).observe(elapsed)
            log.info(
                "request_finished",
                method=scope["method"],
                route=template,
                status=status["code"],
                principal=state.get("principal"),
                duration_ms=round(elapsed * 1000, 2),
            )
