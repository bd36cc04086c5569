"""The ordered event feed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from escrow import events
from escrow.api.deps import Components, components, json_response, require
from escrow.api.routers.orders import STAFF
from escrow.auth import Principal, Role
from escrow.limits import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("")
def feed(
    _: Annotated[Principal, Depends(require(Role.CHECKOUT, *STAFF))],
    parts: Annotated[Components, Depends(components)],
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    type: Annotated[list[str] | None, Query(max_length=20)] = None,  # the query parameter's name
) -> Response:
    """Events after `after` (an event id), oldest first; page with the last id you received."""
    position = events.parse_event_id(after) if after else 0
    data, more = events.read(parts.engine, after=position, limit=limit, types=set(type) if type else None)
    return json_response(200, {"data": data, "has_more": more})
