"""The request context's own checks, driven as ASGI without a server (whose parser may be stricter)."""

from __future__ import annotations

import asyncio
from typing import Any

from escrow.api.context import RequestContext


def call(headers: list[tuple[bytes, bytes]]) -> tuple[int, list[str]]:
    """Status answered, and what reached the app behind the context."""
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/orders", "query_string": b"", "headers": headers}
    asyncio.run(RequestContext(app)(scope, receive, send))
    return int(sent[0]["status"]), reached


def test_a_content_length_of_other_digits_is_not_a_500() -> None:
    """'²' is a digit to str.isdigit() and not to int(): a server that passes such a header
    through must not turn it into a 500 in the body-size check."""
    status, reached = call([(b"content-type", b"application/json"), (b"content-length", "²".encode("latin-1"))])
    assert status == 204 and reached == ["/v1/orders"]  # the app decides; the check does not crash


def test_a_declared_length_over_the_limit_is_413_before_the_app() -> None:
    status, reached = call([(b"content-type", b"application/json"), (b"content-length", b"99999999999")])
    assert status == 413 and reached == []
