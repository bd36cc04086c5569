"""Order intake, confirmation and ordinary refunds (DESIGN §2 flows 1, 4, 5).

Every function runs inside the caller's transaction and locks what it changes, always in
one global order — seller row (shared; exclusive for freeze/unfreeze), then order row,
then hold rows, then balance rows (sorted) — so a release, a confirmation, an expiry and
a freeze racing on one order or seller apply one after the other and never deadlock.
SQLite's BEGIN IMMEDIATE serializes writers instead. One exception: intake of a held order
and of a batch moves the clearing shard last (`posting_statement(defer_pass_through=...)`),
which is safe because every other row they lock belongs to orders they just inserted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from escrow import audit, events
from escrow.audit import Actor
from escrow.domain.orders import Parts, default_hold_deadline, hold_cap, order_status
from escrow.errors import (
    EscrowError,
    ExceedsEscrowedAmount,
    IllegalTransition,
    InsufficientFunds,
    NotFound,
    OrderConflict,
)
from escrow.ids import new_id
from escrow.ledger import Entry, Ledger, Posting, transfer
from escrow.ledger.chart import clearing, order_escrow, order_held, seller_account
from escrow.ledger.store import posting_statement
from escrow.limits import HOT_ACCOUNT_SHARDS
from escrow.money import Money
from escrow.persistence.db import dumps_json
from escrow.persistence.tables import holds, orders, sellers
from escrow.service.screening import Screening
from escrow.settings import Policies


@dataclass(frozen=True, slots=True)
class NewOrder:
    order_id: str
    buyer_id: str
    seller_id: str
    listing_id: str
    title: str
    amount: Money
    payment_method: str
    payment_reference: str
    jurisdiction: str
    request_hash: str


def _insert(conn: Connection, table: Any) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


# Statements of the order and hold paths, built once. Building a select with its WHERE and
# generating its cache key on every call cost ~130 us of CPU a statement here, as much as
# the driver's own round trip; a held order or a release runs about ten of them.
_ORDER = select(orders).where(orders.c.order_id == bindparam("b_order_id"))
_LOCK_ORDER = _ORDER.with_for_update()
_ORDER_HOLDS = select(holds).where(holds.c.order_id == bindparam("b_order_id")).order_by(holds.c.id)
_SAVE_PARTS = update(orders).where(orders.c.order_id == bindparam("b_order_id"))  # SET from the parameters
_SELLER_FROZEN = select(sellers.c.frozen).where(sellers.c.seller_id == bindparam("b_seller_id"))
_SELLER_FROZEN_SHARED = _SELLER_FROZEN.with_for_update(read=True)
_NEW_SELLER = {
    name: insert(sellers).on_conflict_do_nothing(index_elements=["seller_id"])
    for name, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}


# --- reading ------------------------------------------------------------------------------


def hold_view(h: Any) -> dict[str, Any]:
    return {
        "id": h.id,
        "order_id": h.order_id,
        "seller_id": h.seller_id,
        "amount": {"amount": h.amount, "currency": h.currency},
        "original_amount": {"amount": h.original_amount, "currency": h.currency},
        "status": h.status,
        "reason": h.reason,
        "finding_ids": h.finding_ids,
        "expires_at": h.expires_at,
        "claim_window_ends_at": h.claim_window_ends_at,
        "funds": "frozen" if h.confirmed else "escrow",
        "created_at": h.created_at,
        "updated_at": h.updated_at,
    }


def order_view(conn: Connection, o: Any) -> dict[str, Any]:
    order_holds = conn.execute(_ORDER_HOLDS, {"b_order_id": o.order_id}).all()
    return {
        "order_id": o.order_id,
        "buyer_id": o.buyer_id,
        "seller_id": o.seller_id,
        "listing_id": o.listing_id,
        "title": o.title,
        "currency": o.currency,
        "amount": {"amount": o.amount, "currency": o.currency},
        "payment": {"method": o.payment_method, "reference": o.payment_reference},
        "status": o.status,
        "jurisdiction": o.jurisdiction,
        "balances": {
            "escrowed": o.escrowed,
            "held": o.held,
            "released": o.released,
            "refunded": o.refunded,
            "frozen": o.frozen,
        },
        "screening": o.screening,
        "holds": [hold_view(h) for h in order_holds],
        "created_at": o.created_at,
        "confirmed_at": o.confirmed_at,
    }


def get_order(conn: Connection, order_id: str) -> dict[str, Any]:
    row = conn.execute(_ORDER, {"b_order_id": order_id}).one_or_none()
    if row is None:
        raise NotFound(f"order {order_id} not found")
    return order_view(conn, row)


def lock_order(conn: Connection, order_id: str) -> Row[Any]:
    """The order row, locked until the transaction ends; raises NotFound."""
    row = conn.execute(_LOCK_ORDER, {"b_order_id": order_id}).one_or_none()
    if row is None:
        raise NotFound(f"order {order_id} not found")
    return row


def parts_of(o: Any) -> Parts:
    return Parts(o.escrowed, o.held, o.frozen, o.released, o.refunded)


def save_parts(conn: Connection, o: Any, parts: Parts, *, confirmed_at: datetime | None = None) -> None:
    """Write new parts and the status they imply; the table's CHECK re-proves conservation."""
    confirmed = confirmed_at is not None or o.confirmed_at is not None
    values: dict[str, Any] = {
        "b_order_id": o.order_id,
        "escrowed": parts.escrowed,
        "held": parts.held,
        "frozen": parts.frozen,
        "released": parts.released,
        "refunded": parts.refunded,
        "status": order_status(parts, amount=o.amount, confirmed=confirmed),
    }
    if confirmed_at is not None:
        values["confirmed_at"] = confirmed_at
    conn.execute(_SAVE_PARTS, values)


def seller_is_frozen(conn: Connection, seller_id: str, now: datetime) -> bool:
    """Whether proceeds must go to frozen; holds a share lock so a concurrent freeze waits for us.

    The seller row is created on first use so the lock has a row to attach to: a freeze
    (exclusive lock) and a confirmation (share lock) of one seller never interleave.
    """
    dialect = conn.dialect.name
    query = _SELLER_FROZEN_SHARED if dialect == "postgresql" else _SELLER_FROZEN
    frozen = conn.execute(query, {"b_seller_id": seller_id}).scalar_one_or_none()
    if frozen is None:  # first use: create the row (a concurrent creator wins quietly), then lock it
        conn.execute(_NEW_SELLER[dialect], {"seller_id": seller_id, "frozen": False, "created_at": now})
        frozen = conn.execute(query, {"b_seller_id": seller_id}).scalar_one()
    return bool(frozen)


# --- intake -------------------------------------------------------------------------------


def record_order(
    conn: Connection, actor: Actor, now: datetime, order: NewOrder, screening: Screening, policies: Policies
) -> tuple[int, dict[str, Any]]:
    """Record a paid order and act on its screening; 201 new, 200 same order again.

    Raises OrderConflict when the order id exists with different details.
    """
    if conn.dialect.name == "postgresql":
        return _record_order_one_statement(conn, actor, now, order, screening, policies)
    amount = order.amount.amount_minor
    inserted = conn.execute(
        _insert(conn, orders)
        .values(
            order_id=order.order_id,
            buyer_id=order.buyer_id,
            seller_id=order.seller_id,
            listing_id=order.listing_id,
            title=order.title,
            currency=order.amount.currency,
            amount=amount,
            payment_method=order.payment_method,
            payment_reference=order.payment_reference,
            jurisdiction=order.jurisdiction,
            status="escrowed",
            escrowed=amount,
            held=0,
            frozen=0,
            released=0,
            refunded=0,
            screening=screening.to_wire(),
            request_hash=order.request_hash,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["order_id"])
        .returning(orders.c.order_id)
    ).first()
    if inserted is None:
        existing = conn.execute(select(orders).where(orders.c.order_id == order.order_id)).one()
        if existing.request_hash != order.request_hash:
            raise OrderConflict(f"order {order.order_id} was already recorded with different details")
        return 200, order_view(conn, existing)

    ledger = Ledger(conn)
    ledger.post(
        transfer("order_paid", clearing(order.payment_method), order_escrow(order.order_id), order.amount),
        now=now,
        request_id=actor.request_id,
    )
    audit.record(
        conn,
        actor,
        "order.recorded",
        order.order_id,
        now=now,
        data={"amount": order.amount.to_wire(), "seller_id": order.seller_id, "decision": screening.decision},
    )
    events.emit(
        conn,
        "order.screened",
        {"order_id": order.order_id, "seller_id": order.seller_id, **screening.to_wire()},
        now=now,
    )
    if screening.decision != "pass":
        return 201, _hold_on_intake(conn, actor, now, order, screening, policies)
    return 201, get_order(conn, order.order_id)


_ORDER_COLUMNS = (
    "order_id", "buyer_id", "seller_id", "listing_id", "title", "currency", "amount", "payment_method",
    "payment_reference", "jurisdiction", "status", "escrowed", "held", "frozen", "released", "refunded",
    "screening", "request_hash", "created_at",
)  # fmt: skip


def record_passing_order(
    dbapi_conn: Any, actor: Actor, now: datetime, order: NewOrder, screening: Screening
) -> tuple[int, dict[str, Any]] | None:
    """Record an order that screening passed in ONE statement; None if the order id exists.

    On a driver connection in autocommit mode (PostgreSQL only): the statement is the whole
    transaction, so intake costs one round trip instead of three (BEGIN, statement, COMMIT).
    When the order id already exists nothing was written, and the caller answers through
    `record_order` in a transaction (replay or conflict).
    """
    if screening.decision != "pass":
        raise ValueError("only a passing order is recorded in one statement")
    statement = intake_statement(actor, now, order, screening)
    inserted, moved = _execute_intake(dbapi_conn, statement)
    return passing_order_answer(order, screening, now, inserted, moved, statement.balance_rows)


def _record_order_one_statement(
    conn: Connection, actor: Actor, now: datetime, order: NewOrder, screening: Screening, policies: Policies
) -> tuple[int, dict[str, Any]]:
    """PostgreSQL intake: order, ledger entry, audit record and event in one WITH, then any hold.

    When the order id already exists nothing is written, and the stored request decides
    between a replay (200) and a conflict.
    """
    dbapi_conn = conn.connection.dbapi_connection
    held = screening.decision != "pass"
    # A held order has a hold to place after the intake statement: its clearing shard moves
    # last (see `posting_statement`), so the shard is not locked while the hold is placed.
    statement = intake_statement(actor, now, order, screening, defer_pass_through=held)
    inserted, moved = _execute_intake(dbapi_conn, statement)
    balance_rows = statement.balance_rows
    if not inserted:
        existing = conn.execute(select(orders).where(orders.c.order_id == order.order_id)).one()
        if existing.request_hash != order.request_hash:
            raise OrderConflict(f"order {order.order_id} was already recorded with different details")
        return 200, order_view(conn, existing)
    if moved != balance_rows:  # pragma: no cover  # an inflow credits only; nothing can refuse it
        raise InsufficientFunds(f"order {order.order_id}: a balance row refused the payment")
    if held:
        view = _hold_on_intake(conn, actor, now, order, screening, policies)
        Ledger(conn).move_pass_through(statement.deferred)
        return 201, view
    return 201, _new_order_view(order, screening, now)


def _execute_intake(dbapi_conn: Any, statement: IntakeStatement) -> tuple[int, int]:
    """Run the one-statement intake; returns (orders inserted, balance rows moved)."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute(statement.sql, statement.params)
        inserted, moved = cur.fetchone() or (0, 0)
    finally:
        cur.close()
    return int(inserted), int(moved)


@dataclass(frozen=True, slots=True)
class IntakeStatement:
    """PostgreSQL SQL and parameters that record one order; its single row is (inserted, moved)."""

    sql: str
    params: tuple[Any, ...]
    balance_rows: int  # `moved` must equal this when the order was inserted
    deferred: tuple[tuple[str, str, int, int], ...] = ()  # for `Ledger.move_pass_through`


def intake_statement(
    actor: Actor, now: datetime, order: NewOrder, screening: Screening, *, defer_pass_through: bool = False
) -> IntakeStatement:
    """The one-statement intake: order, ledger entry, audit record and event in one WITH.

    Every member after the order insert selects FROM it, so when the order id already
    exists (ON CONFLICT DO NOTHING returns no row) nothing else is written either. With
    `defer_pass_through` the clearing account's balance row is left for the caller to move
    before it commits (see `posting_statement`).
    """
    amount = order.amount.amount_minor
    entry_id = new_id("ent")
    posting = posting_statement(
        transfer("order_paid", clearing(order.payment_method), order_escrow(order.order_id), order.amount),
        entry_id=entry_id,
        now=now,
        request_id=actor.request_id,
        driver="new_order",
        prefix="post",
        defer_pass_through=defer_pass_through,
    )
    audit_data = {"amount": order.amount.to_wire(), "seller_id": order.seller_id, "decision": screening.decision}
    event_data = {"order_id": order.order_id, "seller_id": order.seller_id, **screening.to_wire()}
    sql = _intake_sql(posting.ctes, posting.balances_cte)
    params = (
        order.order_id, order.buyer_id, order.seller_id, order.listing_id, order.title, order.amount.currency,
        amount, order.payment_method, order.payment_reference, order.jurisdiction, "escrowed", amount, 0, 0, 0, 0,
        dumps_json(screening.to_wire()), order.request_hash, now,
        *posting.params,
        now, actor.principal_id, actor.role, order.order_id, actor.request_id, dumps_json(audit_data),
        now, dumps_json(event_data),
    )  # fmt: skip
    return IntakeStatement(sql, params, posting.balance_rows, posting.deferred)


@lru_cache(maxsize=16)
def _intake_sql(posting_ctes: tuple[str, ...], balances_cte: str) -> str:
    """The intake statement's text, built once per posting shape (the same text every order:
    the driver then finds its prepared statement without reparsing a fresh string)."""
    return (
        "WITH new_order AS (INSERT INTO orders (" + ", ".join(_ORDER_COLUMNS) + ") VALUES ("
        + ", ".join(["%s"] * (len(_ORDER_COLUMNS) - 3)) + ", %s::json, %s, %s)"
        " ON CONFLICT (order_id) DO NOTHING RETURNING order_id), "
        + ", ".join(posting_ctes)
        + ", audit AS (INSERT INTO audit_records"
        " (occurred_at, actor, role, action, object_id, reason, request_id, data)"
        " SELECT %s, %s, %s, 'order.recorded', %s, NULL, %s, %s::json FROM new_order)"
        ", event AS (INSERT INTO events (type, created_at, data)"
        " SELECT 'order.screened', %s, %s::json FROM new_order)"
        f" SELECT (SELECT count(*) FROM new_order), (SELECT count(*) FROM {balances_cte})"
    )  # fmt: skip


def passing_order_answer(
    order: NewOrder, screening: Screening, now: datetime, inserted: int, moved: int, balance_rows: int
) -> tuple[int, dict[str, Any]] | None:
    """What the one-statement intake of a passing order answers; None if the order id existed."""
    if not inserted:
        return None
    if moved != balance_rows:  # pragma: no cover  # an inflow credits only; nothing can refuse it
        raise InsufficientFunds(f"order {order.order_id}: a balance row refused the payment")
    return 201, _new_order_view(order, screening, now)


def _new_order_view(order: NewOrder, screening: Screening, now: datetime) -> dict[str, Any]:
    """The view of an order just recorded with nothing held, from the values written."""
    amount = order.amount.amount_minor
    return {
        "order_id": order.order_id,
        "buyer_id": order.buyer_id,
        "seller_id": order.seller_id,
        "listing_id": order.listing_id,
        "title": order.title,
        "currency": order.amount.currency,
        "amount": order.amount.to_wire(),
        "payment": {"method": order.payment_method, "reference": order.payment_reference},
        "status": "escrowed",
        "jurisdiction": order.jurisdiction,
        "balances": {"escrowed": amount, "held": 0, "released": 0, "refunded": 0, "frozen": 0},
        "screening": screening.to_wire(),
        "holds": [],
        "created_at": now,
        "confirmed_at": None,
    }


def _bulk_sql(*, pass_through: bool) -> str:
    """Orders that screening passed, many in one statement; one row per order inserted.

    The orders travel as ONE JSON document, unpacked by the database: psycopg dumps array
    parameters element by element in Python, which cost more than the statement itself.
    Each row carries its own time and actor, since coalesced orders come from different
    requests. Without `pass_through` the clearing legs' balances are left to the caller
    (`record_orders_bulk` moves them last); with it, the statement moves them itself,
    summed per clearing account and currency onto the shard given as the second parameter.
    """
    own_escrow = "SELECT escrow_account, currency, 0::smallint, amount, true FROM ins"
    if pass_through:
        # Clearing rows sort before every order's escrow row ("clearing:" < "order:"),
        # as they do in the one-order statement: the same lock order in both.
        own_escrow += (
            " UNION ALL SELECT clearing_account, currency, %s::smallint, -sum(amount), false FROM ins"
            " GROUP BY clearing_account, currency"
        )
    return (
        "WITH v AS (SELECT * FROM json_to_recordset(%s::json) AS v(order_id text, buyer_id text, seller_id text,"
        " listing_id text, title text, currency text, amount bigint, payment_method text, payment_reference text,"
        " jurisdiction text, screening json, request_hash text, created_at timestamptz, actor text, role text,"
        " request_id text, entry_id text, clearing_account text, escrow_account text, audit_data json,"
        " event_data json, ord int)),"
        " new_orders AS (INSERT INTO orders (" + ", ".join(_ORDER_COLUMNS) + ")"
        " SELECT order_id, buyer_id, seller_id, listing_id, title, currency, amount, payment_method, payment_reference,"
        " jurisdiction, 'escrowed', amount, 0, 0, 0, 0, screening, request_hash, created_at FROM v"
        # In order-id order, not the request's: two batches holding the same ids (a retry while
        # the first attempt runs) then take them in the same order, and one waits instead of
        # deadlocking. Audit records and events keep the request's order below.
        " ORDER BY order_id ON CONFLICT (order_id) DO NOTHING RETURNING order_id),"
        " ins AS (SELECT v.* FROM v JOIN new_orders USING (order_id)),"
        " entries AS (INSERT INTO journal_entries (id, kind, created_at, reverses_id, request_id, memo)"
        " SELECT entry_id, 'order_paid', created_at, NULL, request_id, NULL FROM ins),"
        " legs AS (INSERT INTO postings (entry_id, account, currency, amount, created_at)"
        " SELECT entry_id, clearing_account, currency, -amount, created_at FROM ins"
        " UNION ALL SELECT entry_id, escrow_account, currency, amount, created_at FROM ins),"
        # The balance rows in sorted lock order. The sort reads all of `ins` first, so every
        # order row is inserted before any balance row is locked.
        " moved AS (INSERT INTO ledger_balances (account, currency, shard, balance, non_negative)"
        f" SELECT * FROM ({own_escrow}) AS m ORDER BY 1, 2, 3"
        " ON CONFLICT (account, currency, shard) DO UPDATE SET balance = ledger_balances.balance + excluded.balance"
        " WHERE NOT ledger_balances.non_negative OR ledger_balances.balance + excluded.balance >= 0"
        " RETURNING 1),"
        " audit AS (INSERT INTO audit_records (occurred_at, actor, role, action, object_id, reason, request_id, data)"
        " SELECT created_at, actor, role, 'order.recorded', order_id, NULL, request_id, audit_data FROM ins"
        " ORDER BY ord),"
        " feed AS (INSERT INTO events (type, created_at, data)"
        " SELECT 'order.screened', created_at, event_data FROM ins ORDER BY ord)"
        " SELECT order_id, (SELECT count(*) FROM moved) FROM new_orders"
    )


BULK_SQL = _bulk_sql(pass_through=False)
COALESCED_SQL = _bulk_sql(pass_through=True)


def bulk_row(actor: Actor, now: datetime, order: NewOrder, screening: Screening, ord_: int) -> dict[str, Any]:
    """One order as a row of `_bulk_sql`'s JSON document."""
    wire = screening.to_wire()
    return {
        "order_id": order.order_id,
        "buyer_id": order.buyer_id,
        "seller_id": order.seller_id,
        "listing_id": order.listing_id,
        "title": order.title,
        "currency": order.amount.currency,
        "amount": order.amount.amount_minor,
        "payment_method": order.payment_method,
        "payment_reference": order.payment_reference,
        "jurisdiction": order.jurisdiction,
        "screening": wire,
        "request_hash": order.request_hash,
        "created_at": now,
        "actor": actor.principal_id,
        "role": actor.role,
        "request_id": actor.request_id,
        "entry_id": new_id("ent"),
        "clearing_account": clearing(order.payment_method),
        "escrow_account": order_escrow(order.order_id),
        "audit_data": {"amount": order.amount.to_wire(), "seller_id": order.seller_id, "decision": screening.decision},
        "event_data": {"order_id": order.order_id, "seller_id": order.seller_id, **wire},
        "ord": ord_,
    }


@dataclass(frozen=True, slots=True)
class CoalescedStatement:
    """Passing orders of several requests as ONE autocommit statement (`COALESCED_SQL`).

    Its rows are (order_id, balance rows moved): one per order inserted. An order id that
    already existed yields no row, and its request is answered through `record_order`.
    """

    sql: str
    params: tuple[Any, ...]
    orders: tuple[NewOrder, ...]

    def inserted(self, rows: list[tuple[Any, ...]]) -> set[str]:
        """The order ids the statement inserted, once its row count is checked."""
        inserted = {str(row[0]) for row in rows}
        groups = {(clearing(o.payment_method), o.amount.currency) for o in self.orders if o.order_id in inserted}
        if rows and int(rows[0][1]) != len(inserted) + len(groups):  # pragma: no cover  # inflows only
            raise InsufficientFunds("a coalesced intake's balance rows did not all move")
        return inserted


def coalesced_statement(items: list[tuple[Actor, datetime, NewOrder, Screening]]) -> CoalescedStatement:
    """The statement for passing orders with distinct ids (the caller keeps them distinct:
    a repeated id would join both rows to one insert)."""
    if len({order.order_id for _, _, order, _ in items}) != len(items):
        raise ValueError("coalesced orders must have distinct order ids")
    if any(screening.decision != "pass" for _, _, _, screening in items):
        raise ValueError("only passing orders are coalesced")
    rows = [bulk_row(actor, now, order, screening, i) for i, (actor, now, order, screening) in enumerate(items)]
    shard = random.randrange(HOT_ACCOUNT_SHARDS)  # noqa: S311  # spreads concurrent statements, not crypto
    return CoalescedStatement(COALESCED_SQL, (dumps_json(rows), shard), tuple(order for _, _, order, _ in items))


def record_orders_bulk(
    conn: Connection,
    actor: Actor,
    now: datetime,
    items: list[tuple[NewOrder, Screening]],
    policies: Policies,
) -> list[tuple[int, dict[str, Any]] | EscrowError]:
    """A batch of orders on PostgreSQL in one statement; results in the order of `items`.

    New orders are written together (order rows, one entry with two postings each, the
    balance rows, audit records, events); holds that screening asks for, replays of
    existing orders and conflicts are then handled one by one. An order id that occurs
    twice in one batch is recorded once and the repeat answered like any replay. The
    caller runs this inside a savepoint and falls back to `record_order` per order if the
    statement fails as a whole.
    """
    first: dict[str, int] = {}
    for index, (order, _) in enumerate(items):
        first.setdefault(order.order_id, index)
    fresh = [(order, screening) for index, (order, screening) in enumerate(items) if first[order.order_id] == index]
    rows = [bulk_row(actor, now, order, screening, i) for i, (order, screening) in enumerate(fresh)]
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(BULK_SQL, (dumps_json(rows),))
        answered = cur.fetchall()
    finally:
        cur.close()
    inserted = {row[0] for row in answered}
    if answered and answered[0][1] != len(inserted):  # pragma: no cover  # an escrow credit is never refused
        raise InsufficientFunds("a batch's escrow balance rows did not all move")
    shard = random.randrange(HOT_ACCOUNT_SHARDS)  # noqa: S311  # spreads concurrent batches, not crypto
    clearing_moves: dict[tuple[str, str, int], int] = {}
    for order, _ in fresh:
        if order.order_id in inserted:
            key = (clearing(order.payment_method), order.amount.currency, shard)
            clearing_moves[key] = clearing_moves.get(key, 0) - order.amount.amount_minor
    results: list[tuple[int, dict[str, Any]] | EscrowError] = []
    for index, (order, screening) in enumerate(items):
        if order.order_id in inserted and first[order.order_id] == index:
            if screening.decision == "pass":
                results.append((201, _new_order_view(order, screening, now)))
                continue
            results.append((201, _hold_on_intake(conn, actor, now, order, screening, policies)))
            continue
        existing = conn.execute(select(orders).where(orders.c.order_id == order.order_id)).one()
        if existing.request_hash != order.request_hash:
            results.append(OrderConflict(f"order {order.order_id} was already recorded with different details"))
        else:
            results.append((200, order_view(conn, existing)))
    Ledger(conn).move_pass_through((a, c, sh, delta) for (a, c, sh), delta in clearing_moves.items())
    return results


def _hold_on_intake(
    conn: Connection, actor: Actor, now: datetime, order: NewOrder, screening: Screening, policies: Policies
) -> dict[str, Any]:
    """Hold the whole of an order this transaction has just inserted; returns the order's view.

    The order row is not read back: this transaction inserted it, so no other can see it,
    let alone lock or change it, before commit, and its values are the ones just written.
    That saves two queries (the locking read and the read for the answer) on every held order.
    """
    review = screening.decision == "review"
    policy = policies.for_jurisdiction(order.jurisdiction)
    amount = order.amount.amount_minor
    written = SimpleNamespace(
        order_id=order.order_id, seller_id=order.seller_id, currency=order.amount.currency, amount=amount,
        escrowed=amount, held=0, frozen=0, released=0, refunded=0, confirmed_at=None,
    )  # fmt: skip
    hold = place_hold_locked(
        conn,
        actor,
        now,
        written,
        amount=amount,
        reason="screening: suspected finding, held for review" if review else "screening: confirmed finding",
        finding_ids=list(screening.review_finding_ids if review else screening.hold_finding_ids),
        expires_at=default_hold_deadline(now, policy, review=review),
        cap=hold_cap(now, policy),
    )
    view = _new_order_view(order, screening, now)
    view["status"] = order_status(Parts(0, amount, 0, 0, 0), amount=amount, confirmed=False)
    view["balances"] = {"escrowed": 0, "held": amount, "released": 0, "refunded": 0, "frozen": 0}
    view["holds"] = [hold_view(SimpleNamespace(**hold))]
    return view


# --- holds on an order (placing is here because intake places holds too) -------------------


def place_hold_locked(
    conn: Connection,
    actor: Actor,
    now: datetime,
    o: Any,
    *,
    amount: int,
    reason: str,
    finding_ids: list[str],
    expires_at: datetime,
    cap: datetime,
) -> dict[str, Any]:
    """Move `amount` of the locked order `o` from escrow into a new hold."""
    if o.confirmed_at is not None:
        raise IllegalTransition(f"order {o.order_id} is confirmed: its funds have left escrow")
    if amount > o.escrowed:
        raise ExceedsEscrowedAmount(
            f"hold of {amount} exceeds the {o.escrowed} {o.currency} still escrowed on order {o.order_id}"
        )
    money = Money(amount, o.currency)
    Ledger(conn).post(
        transfer("hold_placed", order_escrow(o.order_id), order_held(o.order_id), money),
        now=now,
        request_id=actor.request_id,
    )
    p = parts_of(o)
    save_parts(conn, o, Parts(p.escrowed - amount, p.held + amount, p.frozen, p.released, p.refunded))
    hold_id = new_id("hld")
    row = {
        "id": hold_id,
        "order_id": o.order_id,
        "seller_id": o.seller_id,
        "currency": o.currency,
        "amount": amount,
        "original_amount": amount,
        "status": "active",
        "reason": reason,
        "finding_ids": finding_ids,
        "confirmed": False,
        "expires_at": expires_at,
        "max_expires_at": max(cap, expires_at),
        "claim_window_ends_at": None,
        "counter_notice": None,
        "created_at": now,
        "updated_at": now,
    }
    conn.execute(holds.insert(), row)
    audit.record(
        conn, actor, "hold.placed", hold_id, now=now, reason=reason,
        data={"order_id": o.order_id, "amount": money.to_wire(), "finding_ids": finding_ids},
    )  # fmt: skip
    events.emit(
        conn,
        "hold.placed",
        {"hold_id": hold_id, "order_id": o.order_id, "seller_id": o.seller_id, "amount": money.to_wire()},
        now=now,
    )
    return row


# --- confirmation and refunds ---------------------------------------------------------------


def confirm_order(conn: Connection, actor: Actor, now: datetime, order_id: str) -> dict[str, Any]:
    """The buyer confirmed receipt: unheld escrow to the seller, held funds to frozen.

    While the seller is frozen the unheld part goes to frozen too. Raises NotFound,
    IllegalTransition (already confirmed, or fully refunded).
    """
    seller_id = conn.execute(select(orders.c.seller_id).where(orders.c.order_id == order_id)).scalar_one_or_none()
    if seller_id is None:
        raise NotFound(f"order {order_id} not found")
    frozen_seller = seller_is_frozen(conn, seller_id, now)  # seller before order: the global lock order
    o = lock_order(conn, order_id)
    if o.confirmed_at is not None:
        raise IllegalTransition(f"order {order_id} is already confirmed")
    if o.escrowed == 0 and o.held == 0:
        raise IllegalTransition(f"order {order_id} has nothing left in escrow (status {o.status})")
    payable = seller_account(o.seller_id, "payable")
    frozen = seller_account(o.seller_id, "frozen")
    legs: list[Posting] = []
    if o.escrowed:
        legs += [
            Posting(order_escrow(order_id), Money(-o.escrowed, o.currency)),
            Posting(frozen if frozen_seller else payable, Money(o.escrowed, o.currency)),
        ]
    if o.held:
        legs += [Posting(order_held(order_id), Money(-o.held, o.currency)), Posting(frozen, Money(o.held, o.currency))]
    Ledger(conn).post(Entry("order_confirmed", tuple(legs)), now=now, request_id=actor.request_id)
    p = parts_of(o)
    to_frozen = p.held + (p.escrowed if frozen_seller else 0)
    to_released = 0 if frozen_seller else p.escrowed
    save_parts(conn, o, Parts(0, 0, p.frozen + to_frozen, p.released + to_released, p.refunded), confirmed_at=now)
    conn.execute(
        update(holds)
        .where(and_(holds.c.order_id == order_id, holds.c.status.in_(("active", "contested"))))
        .values(confirmed=True, updated_at=now)
    )
    audit.record(
        conn, actor, "order.confirmed", order_id, now=now,
        data={"released": to_released, "frozen": to_frozen, "seller_frozen": frozen_seller},
    )  # fmt: skip
    events.emit(
        conn,
        "order.confirmed",
        {
            "order_id": order_id,
            "seller_id": o.seller_id,
            "released": {"amount": to_released, "currency": o.currency},
            "frozen": {"amount": to_frozen, "currency": o.currency},
        },
        now=now,
    )
    return get_order(conn, order_id)
