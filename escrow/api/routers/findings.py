"""Findings (register, read, confirm, dismiss) and the dry-run `POST /v1/screen`.

Party scope: a rights holder registers findings for itself only (its party id and the
`suspected` status are forced) and reads only its own; another party's finding is 404.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field, StrictStr
from starlette.responses import Response

from escrow.api.deps import Components, Operation, components, json_response, operation_for, require, visible
from escrow.api.schemas import NO_NUL, ExternalId, Reason, Strict, UtcDatetime
from escrow.auth import Principal, Role
from escrow.limits import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX
from escrow.screening.limits import BRAND_CHARS_MAX, IDS_PER_FINDING_MAX, PATTERNS_PER_FINDING_MAX, TITLE_CHARS_MAX
from escrow.service.findings import (
    NewFinding,
    check_new_finding,
    confirm_finding,
    create_finding,
    dismiss_finding,
    get_finding,
    list_findings,
)

router = APIRouter(prefix="/v1", tags=["findings"])

READERS = (Role.IP_STAFF, Role.RIGHTS_HOLDER, Role.ADMIN)
PartyId = Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=NO_NUL)]
FindingId = Annotated[str, Field(min_length=1, max_length=40)]


class FindingIn(Strict):
    kind: Literal["keyword", "seller", "listing"]
    brand: Annotated[StrictStr, Field(min_length=1, max_length=BRAND_CHARS_MAX, pattern=NO_NUL)]
    # Pattern text is checked by the screening normaliser (escrow.service.findings), whose
    # messages say why a pattern cannot be screened for.
    patterns: (
        Annotated[list[Annotated[StrictStr, Field(pattern=NO_NUL)]], Field(max_length=PATTERNS_PER_FINDING_MAX)] | None
    ) = None
    seller_ids: Annotated[list[ExternalId], Field(max_length=IDS_PER_FINDING_MAX)] | None = None
    listing_ids: Annotated[list[ExternalId], Field(max_length=IDS_PER_FINDING_MAX)] | None = None
    status: Literal["suspected", "confirmed"] | None = None
    rights_holder_id: PartyId | None = None
    jurisdiction: Annotated[StrictStr, Field(min_length=1, max_length=8, pattern=NO_NUL)] | None = None
    severity: Literal["low", "medium", "high", "critical"] | None = None
    evidence_url: Annotated[StrictStr, Field(max_length=2000, pattern=r"^https?://\S+$")] | None = None
    expires_at: UtcDatetime | None = None

    def command(self, principal: Principal) -> NewFinding:
        """The finding to register, with a rights holder's scope applied."""
        scoped = principal.role is Role.RIGHTS_HOLDER
        return NewFinding(
            kind=self.kind,
            brand=self.brand,
            patterns=tuple(self.patterns or ()),
            seller_ids=tuple(self.seller_ids or ()),
            listing_ids=tuple(self.listing_ids or ()),
            status="suspected" if scoped else self.status or "suspected",
            rights_holder_id=principal.party_id if scoped else self.rights_holder_id,
            jurisdiction=self.jurisdiction,
            severity=self.severity,
            evidence_url=self.evidence_url,
            expires_at=self.expires_at,
        )


class ReasonIn(Strict):
    reason: Reason


class ScreenIn(Strict):
    title: Annotated[StrictStr, Field(min_length=1, max_length=TITLE_CHARS_MAX, pattern=NO_NUL)]
    seller_id: ExternalId | None = None
    listing_id: ExternalId | None = None


@router.post("/findings", status_code=201)
def register_finding(
    body: FindingIn,
    op: Annotated[Operation, Depends(operation_for(Role.IP_STAFF, Role.RIGHTS_HOLDER))],
) -> Response:
    """Register a finding; 422 naming the field (and each bad pattern), with nothing written."""
    parts = op.parts
    cmd = check_new_finding(
        body.command(op.principal),
        now=parts.clock.now(),
        jurisdictions=parts.settings.policies.jurisdictions.keys(),
    )
    return op.run(body, lambda conn, actor, now: (201, create_finding(conn, actor, now, cmd)))


@router.get("/findings")
def list_all(
    principal: Annotated[Principal, Depends(require(*READERS))],
    parts: Annotated[Components, Depends(components)],
    status: Literal["suspected", "confirmed", "dismissed", "expired"] | None = None,
    kind: Literal["keyword", "seller", "listing"] | None = None,
    brand: Annotated[str | None, Query(min_length=1, max_length=BRAND_CHARS_MAX)] = None,
    rights_holder_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    starting_after: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """Findings oldest first; a rights holder's list holds its own findings only."""
    with parts.engine.connect() as conn:
        data, has_more = list_findings(
            conn,
            parts.clock.now(),
            limit=limit,
            starting_after=starting_after,
            status=status,
            kind=kind,
            brand=brand,
            rights_holder_id=rights_holder_id,
            party_scope=principal.party_id if principal.role is Role.RIGHTS_HOLDER else None,
        )
    return json_response(200, {"data": data, "has_more": has_more})


@router.get("/findings/{finding_id}")
def read_finding(
    finding_id: FindingId,
    principal: Annotated[Principal, Depends(require(*READERS))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    with parts.engine.connect() as conn:
        finding = get_finding(conn, finding_id, parts.clock.now())
    visible(principal, finding["rights_holder_id"], "finding")
    return json_response(200, finding)


@router.post("/findings/{finding_id}/confirm")
def confirm(
    finding_id: FindingId,
    body: ReasonIn,
    op: Annotated[Operation, Depends(operation_for(Role.IP_STAFF))],
) -> Response:
    """suspected -> confirmed: matching orders are then held, not only held for review."""
    return op.run(body, lambda conn, actor, now: (200, confirm_finding(conn, actor, now, finding_id, body.reason)))


@router.post("/findings/{finding_id}/dismiss")
def dismiss(
    finding_id: FindingId,
    body: ReasonIn,
    op: Annotated[Operation, Depends(operation_for(Role.IP_STAFF))],
) -> Response:
    """suspected | confirmed -> dismissed: the finding stops matching."""
    return op.run(body, lambda conn, actor, now: (200, dismiss_finding(conn, actor, now, finding_id, body.reason)))


@router.post("/screen")
def screen(
    body: ScreenIn,
    _: Annotated[Principal, Depends(require(Role.IP_STAFF))],
    parts: Annotated[Components, Depends(components)],
) -> Response:
    """Dry run: what screening would decide for this order now. Writes nothing."""
    result = parts.screener.screen(body.title, body.seller_id, body.listing_id)
    return json_response(200, result.to_wire())
