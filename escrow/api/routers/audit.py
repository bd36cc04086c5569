"""The audit trail of one object, for admins and finance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from escrow import audit
from escrow.api.deps import Components, components, json_response, require
from escrow.auth import Principal, Role
from escrow.errors import InvalidCursor
from escrow.limits import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
def list_audit(
    _: Annotated[Principal, Depends(require(Role.ADMIN, Role.FINANCE))],
    parts: Annotated[Components, Depends(components)],
    object_id: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    starting_after: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    after = 0
    if starting_after is not None:
        digits = starting_after[4:]
        # ASCII digits only (isdigit() takes "²"), and few enough to fit the bigint column.
        if not starting_after.startswith("aud_") or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
            raise InvalidCursor("starting_after must be an audit record id such as aud_42")
        after = int(digits)
    with parts.engine.connect() as conn:
        rows = audit.trail(conn, object_id, after_seq=after, limit=limit + 1)
    data = [{"id": f"aud_{r.pop('seq')}", **r} for r in rows[:limit]]
    return json_response(200, {"data": data, "has_more": len(rows) > limit})
