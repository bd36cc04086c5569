"""Infringement findings (DESIGN §3 "Finding"): register, confirm, dismiss, read, screen.

Lifecycle: `suspected` -> `confirmed` | `dismissed`, and `confirmed` -> `dismissed` (IP staff
retract a finding confirmed by mistake; without it a wrong confirmed finding would hold orders
until it expires). A finding whose `expires_at` has passed reads as `expired`, stops matching
at once, and takes no further transition. Every change writes one audit record and one event
and bumps `finding_revision` in the same transaction, which is how every API process's
`MatcherRegistry` learns that its matcher is stale.

Validation (`check_new_finding`) runs before any transaction: normalising ten thousand
patterns must not hold a database lock.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, Select, and_, func, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from escrow import audit, events
from escrow.audit import Actor
from escrow.errors import IllegalTransition, InvalidCursor, InvalidInput, NotFound
from escrow.ids import new_id
from escrow.persistence.db import single_statement
from escrow.persistence.tables import FINDING_KINDS, FINDING_SEVERITIES, finding_revision, findings
from escrow.ports import Clock
from escrow.screening import InvalidPattern, validate_pattern
from escrow.screening.limits import (
    BRAND_CHARS_MAX,
    ID_CHARS_MAX,
    IDS_PER_FINDING_MAX,
    PATTERNS_PER_FINDING_MAX,
)
from escrow.screening.matcher import FindingRule
from escrow.screening.registry import ActiveFinding, FindingState, MatcherRegistry
from escrow.service.screening import Decision, Screening

ACTIVE_STATUSES: Final = ("suspected", "confirmed")
WIRE_STATUSES: Final = ("suspected", "confirmed", "dismissed", "expired")
FIELD_ERRORS_MAX: Final = 20  # a 10,000-pattern upload with every pattern wrong gets a readable answer
_ID_PREFIX: Final = "fnd_"
_ID_CHARS: Final = len(_ID_PREFIX) + 26


class InvalidFindingInput(InvalidInput):
    code = "invalid_finding"
    title = "Invalid finding"


class InvalidPatternInput(InvalidFindingInput):
    code = "invalid_pattern"
    title = "Invalid keyword pattern"


@dataclass(frozen=True, slots=True)
class NewFinding:
    """A finding to register; the router has already applied the caller's party scope."""

    kind: str
    brand: str
    patterns: tuple[str, ...] = ()
    seller_ids: tuple[str, ...] = ()
    listing_ids: tuple[str, ...] = ()
    status: str = "suspected"
    rights_holder_id: str | None = None
    jurisdiction: str | None = None
    severity: str | None = None
    evidence_url: str | None = None
    expires_at: datetime | None = None


def _values_field(kind: str) -> str:
    return {"keyword": "patterns", "seller": "seller_ids", "listing": "listing_ids"}[kind]


def check_new_finding(cmd: NewFinding, *, now: datetime, jurisdictions: Collection[str]) -> NewFinding:
    """Guard clauses for a new finding; returns it with its values de-duplicated (order kept).

    Raises InvalidPatternInput naming each pattern screening cannot use, and
    InvalidFindingInput for anything else; both carry `errors` [{field, message}].
    """
    if cmd.kind not in FINDING_KINDS:
        raise InvalidFindingInput(f"kind must be one of {', '.join(FINDING_KINDS)}", field="kind")
    if cmd.status not in ACTIVE_STATUSES:
        raise InvalidFindingInput("a new finding is suspected or confirmed", field="status")
    brand = cmd.brand.strip()
    if not 0 < len(brand) <= BRAND_CHARS_MAX:
        raise InvalidFindingInput(f"brand must be 1-{BRAND_CHARS_MAX} characters", field="brand")
    if cmd.severity is not None and cmd.severity not in FINDING_SEVERITIES:
        raise InvalidFindingInput(f"severity must be one of {', '.join(FINDING_SEVERITIES)}", field="severity")
    if cmd.jurisdiction is not None and cmd.jurisdiction not in jurisdictions:
        raise InvalidFindingInput(
            f"jurisdiction {cmd.jurisdiction!r} has no policy; known: {', '.join(sorted(jurisdictions))}",
            field="jurisdiction",
        )
    if cmd.expires_at is not None and cmd.expires_at <= now:
        raise InvalidFindingInput("expires_at must be in the future", field="expires_at")
    own = _values_field(cmd.kind)
    given = {"patterns": cmd.patterns, "seller_ids": cmd.seller_ids, "listing_ids": cmd.listing_ids}
    for name, values in given.items():
        if name != own and values:
            raise InvalidFindingInput(f"a {cmd.kind} finding takes {own}, not {name}", field=name)
    values = tuple(dict.fromkeys(given[own]))
    if not values:
        raise InvalidFindingInput(f"a {cmd.kind} finding needs at least one of {own}", field=own)
    limit = PATTERNS_PER_FINDING_MAX if cmd.kind == "keyword" else IDS_PER_FINDING_MAX
    if len(values) > limit:
        raise InvalidFindingInput(f"{len(values)} {own}, more than {limit} in one finding", field=own)
    if cmd.kind == "keyword":
        _check_patterns(values)
    else:
        bad = [i for i, v in enumerate(values) if not 0 < len(v) <= ID_CHARS_MAX]
        if bad:
            raise InvalidFindingInput(f"{own}[{bad[0]}] must be 1-{ID_CHARS_MAX} characters", field=f"{own}.{bad[0]}")
    # Timestamps leave the service in UTC (DESIGN §5), so they are stored that way too.
    expires_at = cmd.expires_at.astimezone(UTC) if cmd.expires_at is not None else None
    checked = replace(cmd, brand=brand, expires_at=expires_at)
    if cmd.kind == "keyword":
        return replace(checked, patterns=values)
    if cmd.kind == "seller":
        return replace(checked, seller_ids=values)
    return replace(checked, listing_ids=values)


def _check_patterns(patterns: tuple[str, ...]) -> None:
    errors: list[dict[str, str]] = []
    for index, pattern in enumerate(patterns):
        try:
            validate_pattern(pattern)
        except InvalidPattern as exc:
            shown = pattern if len(pattern) <= 60 else pattern[:57] + "..."
            errors.append({"field": f"patterns.{index}", "message": f"pattern {shown!r}: {exc}"})
            if len(errors) == FIELD_ERRORS_MAX:
                break
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidPatternInput(errors[0]["message"] + more, errors=errors)


# --- writes ---------------------------------------------------------------------------------


def bump_revision(conn: Connection) -> None:
    """Mark the findings changed, in the caller's transaction (see escrow.screening.registry)."""
    bumped = conn.execute(
        update(finding_revision).where(finding_revision.c.id == 1).values(revision=finding_revision.c.revision + 1)
    )
    if bumped.rowcount == 0:  # a database emptied by hand; the migration seeds the row
        conn.execute(insert(finding_revision).values(id=1, revision=1))


def create_finding(conn: Connection, actor: Actor, now: datetime, cmd: NewFinding) -> dict[str, Any]:
    """Register an already checked finding (see `check_new_finding`); returns its wire shape."""
    finding_id = new_id("fnd")
    row = {
        "id": finding_id,
        "kind": cmd.kind,
        "status": cmd.status,
        "brand": cmd.brand,
        "patterns": list(cmd.patterns),
        "seller_ids": list(cmd.seller_ids),
        "listing_ids": list(cmd.listing_ids),
        "rights_holder_id": cmd.rights_holder_id,
        "jurisdiction": cmd.jurisdiction,
        "severity": cmd.severity,
        "evidence_url": cmd.evidence_url,
        "expires_at": cmd.expires_at,
        "created_by": actor.principal_id,
        "created_at": now,
        "updated_at": now,
    }
    conn.execute(findings.insert(), row)
    bump_revision(conn)
    summary = _summary(row)
    audit.record(conn, actor, "finding.created", finding_id, now=now, data=summary)
    events.emit(conn, "finding.created", {"finding_id": finding_id, **summary}, now=now)
    return finding_view(row, now)


def confirm_finding(conn: Connection, actor: Actor, now: datetime, finding_id: str, reason: str) -> dict[str, Any]:
    """suspected -> confirmed. Raises NotFound, IllegalTransition."""
    return _transition(conn, actor, now, finding_id, reason, target="confirmed", allowed_from=("suspected",))


def dismiss_finding(conn: Connection, actor: Actor, now: datetime, finding_id: str, reason: str) -> dict[str, Any]:
    """suspected | confirmed -> dismissed. Raises NotFound, IllegalTransition."""
    return _transition(conn, actor, now, finding_id, reason, target="dismissed", allowed_from=ACTIVE_STATUSES)


def _transition(
    conn: Connection,
    actor: Actor,
    now: datetime,
    finding_id: str,
    reason: str,
    *,
    target: str,
    allowed_from: tuple[str, ...],
) -> dict[str, Any]:
    found = conn.execute(select(findings).where(findings.c.id == finding_id).with_for_update()).first()
    if found is None:
        raise NotFound("finding not found")
    row = dict(found._mapping)
    current = wire_status(row, now)
    if current == "expired":
        raise IllegalTransition(
            f"finding {finding_id} expired at {row['expires_at'].isoformat()}; it no longer screens"
        )
    if current not in allowed_from:
        raise IllegalTransition(
            f"finding {finding_id} is {current}; only a {' or '.join(allowed_from)} finding can be {target}"
        )
    conn.execute(update(findings).where(findings.c.id == finding_id).values(status=target, updated_at=now))
    bump_revision(conn)
    row.update(status=target, updated_at=now)
    data = {"from": current, "to": target, "kind": row["kind"], "brand": row["brand"]}
    audit.record(conn, actor, f"finding.{target}", finding_id, now=now, reason=reason, data=data)
    events.emit(conn, f"finding.{target}", {"finding_id": finding_id, **_summary(row)}, now=now)
    return finding_view(row, now)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """What an audit record or event says about a finding: small, whatever its pattern count."""
    return {
        "kind": row["kind"],
        "brand": row["brand"],
        "status": row["status"],
        "rights_holder_id": row["rights_holder_id"],
        "values": len(row[_values_field(row["kind"])]),
    }


# --- reads ----------------------------------------------------------------------------------


def wire_status(row: Any, now: datetime) -> str:
    status = str(row["status"])
    expires_at = row["expires_at"]
    if status in ACTIVE_STATUSES and expires_at is not None and expires_at <= now:
        return "expired"
    return status


def finding_view(row: Any, now: datetime) -> dict[str, Any]:
    """The Finding shape of DESIGN §5."""
    return {
        "id": row["id"],
        "status": wire_status(row, now),
        "kind": row["kind"],
        "brand": row["brand"],
        "patterns": list(row["patterns"]),
        "seller_ids": list(row["seller_ids"]),
        "listing_ids": list(row["listing_ids"]),
        "rights_holder_id": row["rights_holder_id"],
        "jurisdiction": row["jurisdiction"],
        "severity": row["severity"],
        "evidence_url": row["evidence_url"],
        "expires_at": row["expires_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def get_finding(conn: Connection, finding_id: str, now: datetime) -> dict[str, Any]:
    """One finding's wire shape. Raises NotFound (the caller applies party scope)."""
    row = conn.execute(select(findings).where(findings.c.id == finding_id)).first()
    if row is None:
        raise NotFound("finding not found")
    return finding_view(row._mapping, now)


def _status_filter(status: str, now: datetime) -> ColumnElement[bool]:
    live = or_(findings.c.expires_at.is_(None), findings.c.expires_at > now)
    if status == "expired":
        return and_(findings.c.status.in_(ACTIVE_STATUSES), findings.c.expires_at <= now)
    if status in ACTIVE_STATUSES:
        return and_(findings.c.status == status, live)
    return findings.c.status == status


def list_findings(
    conn: Connection,
    now: datetime,
    *,
    limit: int,
    starting_after: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    brand: str | None = None,
    rights_holder_id: str | None = None,
    party_scope: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Findings in id (creation) order after the cursor; `party_scope` limits to one party's.

    Returns (page, has_more). Raises InvalidCursor for a cursor that is not a finding id.
    """
    query = select(findings)
    if starting_after is not None:
        if not starting_after.startswith(_ID_PREFIX) or len(starting_after) != _ID_CHARS:
            raise InvalidCursor("starting_after must be a finding id such as fnd_01jd...")
        query = query.where(findings.c.id > starting_after)
    if status is not None:
        query = query.where(_status_filter(status, now))
    if kind is not None:
        query = query.where(findings.c.kind == kind)
    if brand is not None:
        query = query.where(func.lower(findings.c.brand) == brand.strip().lower())
    if rights_holder_id is not None:
        query = query.where(findings.c.rights_holder_id == rights_holder_id)
    if party_scope is not None:
        query = query.where(findings.c.rights_holder_id == party_scope)
    rows = conn.execute(query.order_by(findings.c.id).limit(limit + 1)).all()
    return [finding_view(r._mapping, now) for r in rows[:limit]], len(rows) > limit


# --- screening ------------------------------------------------------------------------------


_MARKER = select(finding_revision.c.revision).where(finding_revision.c.id == 1)


def _read_marker(dbapi_conn: Any) -> int:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("SELECT revision FROM finding_revision WHERE id = 1")
        row = cur.fetchone()
    finally:
        cur.close()
    return int(row[0]) if row else 0


class DatabaseFindingSource:
    """The findings table as the registry's `FindingSource`.

    `changed_since` filters on `updated_at`, which every change stamps in the transaction that
    bumps `finding_revision`. There is no index on `updated_at` (a schema change): the query
    scans the findings table, but reads only three narrow columns, and runs only when the
    marker moved.
    """

    RULES_PER_QUERY = 500  # ids per IN list when fetching the rules of new findings

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def marker(self) -> int:
        """The findings' revision; every API process reads it five times a second.

        On PostgreSQL it is read in autocommit: one round trip, where a pooled transaction
        cost three (BEGIN, the query, and the ROLLBACK that resets the connection).
        """
        if self._engine.dialect.name == "postgresql":
            return single_statement(self._engine, _read_marker)
        with self._engine.connect() as conn:
            value = conn.execute(_MARKER).scalar_one_or_none()
        return int(value or 0)

    def active(self, now: datetime) -> list[ActiveFinding]:
        query = self._rule_query().where(_status_filter("suspected", now) | _status_filter("confirmed", now))
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(findings.c.id)).all()
        return [_active_finding(r) for r in rows]

    def changed_since(self, since: datetime) -> list[FindingState]:
        query = select(findings.c.id, findings.c.status, findings.c.expires_at).where(findings.c.updated_at >= since)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [FindingState(r.id, r.status, r.expires_at) for r in rows]

    def rules(self, finding_ids: Collection[str], now: datetime) -> list[ActiveFinding]:
        ids = sorted(finding_ids)
        live = _status_filter("suspected", now) | _status_filter("confirmed", now)
        found: list[ActiveFinding] = []
        with self._engine.connect() as conn:
            for start in range(0, len(ids), self.RULES_PER_QUERY):
                chunk = ids[start : start + self.RULES_PER_QUERY]
                rows = conn.execute(self._rule_query().where(findings.c.id.in_(chunk), live)).all()
                found.extend(_active_finding(r) for r in rows)
        return found

    @staticmethod
    def _rule_query() -> Select[Any]:
        return select(
            findings.c.id,
            findings.c.kind,
            findings.c.status,
            findings.c.brand,
            findings.c.patterns,
            findings.c.seller_ids,
            findings.c.listing_ids,
            findings.c.expires_at,
        )


def _active_finding(r: Row[Any]) -> ActiveFinding:
    return ActiveFinding(
        FindingRule(
            finding_id=r.id,
            kind=r.kind,
            brand=r.brand,
            status=r.status,
            patterns=tuple(r.patterns),
            seller_ids=tuple(r.seller_ids),
            listing_ids=tuple(r.listing_ids),
        ),
        r.expires_at,
    )


class FindingsScreener:
    """The `Screener` of order intake and `POST /v1/screen`, over the live matcher.

    Policy: a match of a confirmed finding holds (`hold_finding_ids`); otherwise a match of a
    suspected finding holds for review (`review_finding_ids`); otherwise the order passes.
    Both id lists name every matched finding of their status, whatever the decision.
    """

    def __init__(self, registry: MatcherRegistry, clock: Clock) -> None:
        self.registry = registry
        self._clock = clock

    def screen(self, title: str, seller_id: str | None, listing_id: str | None) -> Screening:
        found = self.registry.current().screen(title, seller_id, listing_id, now=self._clock.now())
        hold = tuple(dict.fromkeys(m.finding_id for m, status in found if status == "confirmed"))
        review = tuple(dict.fromkeys(m.finding_id for m, status in found if status == "suspected"))
        matches = tuple(
            {
                "finding_id": m.finding_id,
                "kind": m.kind,
                "brand": m.brand,
                "pattern": m.pattern,
                "matched": m.matched,
                "start": m.start,
                "end": m.end,
            }
            for m, _ in found
        )
        decision: Decision = "hold" if hold else "review" if review else "pass"
        return Screening(decision, matches, hold_finding_ids=hold, review_finding_ids=review)

    def refresh_now(self, *, force: bool = False) -> bool:
        """Apply finding changes in this thread now, instead of within a poll (tests; see MatcherRegistry)."""
        return self.registry.refresh_now(force=force)
