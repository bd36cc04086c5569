"""Operator endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.responses import Response

from escrow.api.deps import Components, components, json_response
from escrow.api.problems import problem_body, problem_response
from escrow.persistence.migrate import current_revision, head_revision

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> Response:
    """The process is up; says nothing about its dependencies."""
    return json_response(200, {"status": "ok"})


@router.get("/readyz")
def readyz(parts: Annotated[Components, Depends(components)]) -> Response:
    """Ready when the database answers and its schema is at the migrations' head."""
    try:
        with parts.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = current_revision(parts.engine)
    except Exception as exc:  # any failure to reach the database means not ready
        return problem_response(
            problem_body(503, "database_unreachable", "Not ready", f"database unreachable: {type(exc).__name__}", None)
        )
    head = head_revision()
    if current != head:
        return problem_response(
            problem_body(
                503,
                "schema_not_at_head",
                "Not ready",
                f"schema at {current}, migrations at {head}; run `escrow migrate`",
                None,
            )
        )
    return json_response(200, {"status": "ready", "schema": current})


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
