"""RFC 9457 problem responses: one table from error class to HTTP status.

Every error a client can see goes through `problem()`, so every error body has the same
shape and a stable `code`. Unexpected exceptions become a 500 with `detail: internal error`
and the request id; their traceback goes to the log only.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from escrow.errors import (
    Conflict,
    EscrowError,
    Forbidden,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IllegalTransition,
    InsufficientFunds,
    InvalidCursor,
    InvalidInput,
    InvalidMoney,
    NotFound,
    Unauthenticated,
    UnbalancedEntry,
)
from escrow.ports import InstructionConflict, RailError, RailUnavailable, WebhookRejected
from escrow.service.advance_refunds import (
    CurrencyMismatch,
    ExceedsRefundableAmount,
    FourEyesRequired,
    GuaranteeFundInsufficient,
)
from escrow.service.deposits import ExceedsDeposit

PROBLEM_JSON = "application/problem+json"

# Most specific class first: the first match wins.
STATUS_BY_ERROR: tuple[tuple[type[EscrowError], int], ...] = (
    (IdempotencyKeyReused, 422),
    (FourEyesRequired, 403),
    (GuaranteeFundInsufficient, 409),
    (ExceedsRefundableAmount, 409),
    (ExceedsDeposit, 409),
    (CurrencyMismatch, 422),
    (IdempotencyKeyInUse, 409),
    (InsufficientFunds, 409),
    (IllegalTransition, 409),
    (Conflict, 409),
    (InvalidMoney, 422),
    (UnbalancedEntry, 422),
    (InvalidCursor, 400),
    (InvalidInput, 422),
    (Unauthenticated, 401),
    (WebhookRejected, 401),
    (RailUnavailable, 503),
    (InstructionConflict, 409),
    (RailError, 502),
    (Forbidden, 403),
    (NotFound, 404),
    (EscrowError, 400),
)


def status_for(exc: EscrowError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400  # pragma: no cover  # EscrowError is the last row


def echoed(text: str) -> str:
    """Client text fit to quote in an answer: a lone surrogate (valid in JSON escapes, not in
    UTF-8) is written as its escape instead of failing the encoding of the whole answer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def problem_body(
    status: int, code: str, title: str, detail: str, request_id: str | None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:escrow:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request_id:
        body["request_id"] = request_id
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=int(body["status"]), media_type=PROBLEM_JSON, headers=headers)


def from_error(exc: EscrowError, request_id: str | None) -> dict[str, Any]:
    status = status_for(exc)
    extra = {k: v for k, v in exc.extra.items() if k in {"field", "accounts", "errors"}}
    return problem_body(status, exc.code, exc.title, exc.detail, request_id, **extra)


def internal_error(request_id: str | None) -> dict[str, Any]:
    return problem_body(500, "internal_error", "Internal error", "internal error", request_id)
