"""Posting entries and reading balances, on SQLite and PostgreSQL.

This is the hottest path of the service (every order, hold and release posts an entry),
so it speaks to the DB-API cursor of the caller's transaction with prepared SQL strings
instead of compiling SQLAlchemy constructs on every call. A post is the entry, its
postings (one multi-row INSERT) and one multi-row guarded upsert of the balance rows,
issued last so row locks are held for the shortest time before commit. On SQLite these
are three statements; on PostgreSQL they are one (the first two as data-modifying WITH
members), so a post costs one round trip to the server instead of three.

The guard is in the upsert itself: `balance + delta >= 0` is evaluated under the row lock
(PostgreSQL re-checks it against the newest row version after waiting), so no concurrency
can drive a guarded account negative, and nothing is read before it is written.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Connection

from escrow.errors import IllegalTransition, InsufficientFunds, InvalidInput, NotFound
from escrow.ids import new_id
from escrow.ledger.chart import rule_for, validate_account
from escrow.ledger.entries import Entry, Posting
from escrow.money import Money

_SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # the storage format SQLAlchemy's SQLite DateTime reads


class PostedEntry(NamedTuple):
    """A journal entry as written. A named tuple: `prepare` builds one for every entry.

    An internal value, not a wire shape: it equals any tuple of the same fields, and a
    serialiser sees a list. Responses build their own dicts.
    """

    id: str
    kind: str
    created_at: datetime
    postings: tuple[Posting, ...]
    reverses: str | None = None


class PreparedEntry(NamedTuple):
    """An entry turned into statements and their parameters (see `Ledger.prepare`).

    A named tuple, not a dataclass: built for every posted entry, and a tuple is made in C.
    """

    posted: PostedEntry
    sql_postings: str
    sql_balances: str  # on PostgreSQL, the whole post as one statement (see `pg_post_sql`)
    head: tuple[Any, ...]
    postings: tuple[Any, ...]
    rows: tuple[tuple[str, str, int, int], ...]
    balances: tuple[Any, ...]
    guarded: frozenset[str]


@dataclass(frozen=True, slots=True)
class TrialBalanceLine:
    currency: str
    total_debits: int  # sum of debit (negative) account balances, as a positive number
    total_credits: int  # sum of credit (positive) account balances


@lru_cache(maxsize=256)
def _sql(dialect: str, statement: str, rows: int = 1) -> str:
    """SQL text in the driver's own parameter style, built once per shape."""
    mark = "?" if dialect == "sqlite" else "%s"

    def group(n: int) -> str:
        return "(" + ", ".join([mark] * n) + ")"

    if statement == "entry":
        return f"INSERT INTO journal_entries (id, kind, created_at, reverses_id, request_id, memo) VALUES {group(6)}"
    if statement == "postings":
        return "INSERT INTO postings (entry_id, account, currency, amount, created_at) VALUES " + ", ".join(
            [group(5)] * rows
        )
    if statement == "balances":
        return (
            "INSERT INTO ledger_balances (account, currency, shard, balance, non_negative) VALUES "
            + ", ".join([group(5)] * rows)
            + " ON CONFLICT (account, currency, shard) DO UPDATE"
            " SET balance = ledger_balances.balance + excluded.balance"
            " WHERE NOT ledger_balances.non_negative"
            " OR ledger_balances.balance + excluded.balance >= 0"
            " RETURNING account, currency, shard, non_negative"
        )
    raise ValueError(statement)


@lru_cache(maxsize=256)
def _split_statements(postings: int, rows: int) -> tuple[str, str]:
    """The postings insert and the balance upsert of a post, as separate statements (SQLite)."""
    return _sql("sqlite", "postings", postings), _sql("sqlite", "balances", rows)


@lru_cache(maxsize=256)
def _pg_statements(postings: int, rows: int) -> tuple[str, str]:
    """The postings insert (for `posting_statement`'s callers) and the whole post as one statement."""
    return _sql("postgresql", "postings", postings), pg_post_sql(postings, rows)


@lru_cache(maxsize=256)
def pg_post_sql(postings: int, rows: int) -> str:
    """PostgreSQL: the three statements of a post as one.

    The balance upsert is the main statement, so its RETURNING rows are the statement's
    result. It selects FROM the entry insert: PostgreSQL runs the main statement before any
    WITH member it does not read, so without that the balance rows would be locked first and
    stay locked while the entry insert waited (say on a concurrent reversal of the same
    entry). Read from the entry, the upsert runs after it, as the third of three statements
    did. The postings' foreign key to the entry is checked at the end of the statement.
    """
    moves = ", ".join(["(%s, %s, %s::smallint, %s::bigint, %s::boolean)"] * rows)
    return (
        "WITH ledger_entry AS (" + _sql("postgresql", "entry") + " RETURNING id),"
        " ledger_postings AS (" + _sql("postgresql", "postings", postings) + ")"
        " INSERT INTO ledger_balances (account, currency, shard, balance, non_negative)"
        " SELECT v.account, v.currency, v.shard, v.delta, v.guard FROM ledger_entry,"
        f" (VALUES {moves}) AS v(account, currency, shard, delta, guard) ORDER BY 1, 2, 3"
        " ON CONFLICT (account, currency, shard) DO UPDATE SET balance = ledger_balances.balance + excluded.balance"
        " WHERE NOT ledger_balances.non_negative OR ledger_balances.balance + excluded.balance >= 0"
        " RETURNING account, currency, shard, non_negative"
    )


class Ledger:
    """The ledger inside one open transaction (`conn`); the caller commits or rolls back.

    A failed `post` (InsufficientFunds, or any database error) leaves the transaction
    unusable for further writes: roll it back, or post inside `conn.begin_nested()` when a
    failure is an expected outcome.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._dialect = conn.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"the ledger speaks SQLite and PostgreSQL, not {self._dialect}")
        self._sql_entry = _sql(self._dialect, "entry")
        self._one_statement = self._dialect == "postgresql"
        self._sqlite = self._dialect == "sqlite"
        self._statements = _pg_statements if self._one_statement else _split_statements

    def _cursor(self) -> Any:
        # Looked up on each call, not cached: the Connection may reconnect between statements.
        return self._conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def prepare(
        self,
        entry: Entry,
        *,
        now: datetime,
        request_id: str | None = None,
        entry_id: str | None = None,
    ) -> PreparedEntry:
        """Everything `post` sends, computed without touching the database.

        Callers that hold a write lock while posting (SQLite's single writer above all) may
        prepare before they open the transaction, so the lock covers only the statements.
        """
        net = entry.net
        if not net:
            raise InvalidInput("an entry must move money: its postings cancel out on every account")
        entry_id = entry_id or new_id("ent")
        ts = _sqlite_ts(now) if self._sqlite else now
        postings: list[Any] = []
        for p in entry.postings:
            amount = p.amount
            postings += (entry_id, p.account, amount.currency, amount.amount_minor, ts)
        # A guarded *debit* is sent with non_negative = false: both databases check CHECK
        # constraints on the proposed row before they detect the conflict, so a negative
        # proposed balance would fail even though the row exists. On conflict the stored
        # row's own flag (true) drives the guard in the WHERE. If instead the row was
        # inserted, the account never held money: the returned flag is false and the
        # entry is refused (the caller's rollback removes the row).
        rows: list[tuple[str, str, int, int]] = []
        balances: list[Any] = []
        guarded: list[str] = []
        # Sorted so every transaction locks balance rows in one global order: no deadlocks.
        # (account, currency) is unique in `net`, so the shard never decides the order.
        for (account, currency), delta in sorted(net.items()):
            rule = rule_for(account)
            shard = _pick_shard(rule.shards)
            rows.append((account, currency, shard, delta))
            if rule.non_negative:
                guarded.append(account)
                balances += (account, currency, shard, delta, delta > 0)
            else:
                balances += (account, currency, shard, delta, False)
        sql_postings, sql_balances = self._statements(len(entry.postings), len(rows))
        return PreparedEntry(
            PostedEntry(entry_id, entry.kind, now, entry.postings, entry.reverses),
            sql_postings,
            sql_balances,
            (entry_id, entry.kind, ts, entry.reverses, request_id, entry.memo),
            tuple(postings),
            tuple(rows),
            tuple(balances),
            frozenset(guarded),
        )

    def post(
        self,
        entry: Entry | PreparedEntry,
        *,
        now: datetime | None = None,
        request_id: str | None = None,
        entry_id: str | None = None,
    ) -> PostedEntry:
        """Write `entry` and move every balance it touches, atomically with the caller's work.

        Takes an `Entry` (with `now`) or what `prepare` made of one. Raises InsufficientFunds,
        naming the account, when a guarded account would go negative.
        """
        if isinstance(entry, Entry):
            if now is None:
                raise TypeError("post(entry) needs now=")
            entry = self.prepare(entry, now=now, request_id=request_id, entry_id=entry_id)
        cur = self._cursor()
        try:
            if self._one_statement:  # sql_balances holds the whole post (see `prepare`)
                cur.execute(entry.sql_balances, entry.head + entry.postings + entry.balances)
            else:
                cur.execute(self._sql_entry, entry.head)
                cur.execute(entry.sql_postings, entry.postings)
                cur.execute(entry.sql_balances, entry.balances)
            returned = cur.fetchall()
            guarded = entry.guarded
            # A row the guard refused is not returned; a guarded row returned with its flag
            # false was inserted just now, so the account never held money. Counting rows is
            # enough because each balance key occurs once in a post (they are the keys of
            # `entry.net`), so no row can be returned twice.
            if len(returned) != len(entry.rows) or any(not r[3] and r[0] in guarded for r in returned):
                moved = {(r[0], r[1], r[2]) for r in returned if r[3] or r[0] not in guarded}
                raise self._insufficient(list(entry.rows), moved)
        finally:
            cur.close()
        return entry.posted

    def move_pass_through(self, rows: Iterable[tuple[str, str, int, int]]) -> None:
        """Apply the balance moves a posting statement deferred (see `posting_statement`).

        Only unguarded pass-through accounts are deferred, so nothing here can be refused:
        the moves only have to land in the same transaction as their postings, and landing
        last keeps the shared shard row locked for one statement instead of the whole
        transaction. Call it as the transaction's last write (see `posting_statement` for
        the lock order this relies on).
        """
        rows = sorted(rows)
        if not rows:
            return
        params: list[Any] = []
        for account, currency, shard, delta in rows:
            rule = rule_for(account)
            if rule.shards == 1 or rule.non_negative:
                raise ValueError(f"{account} is not a pass-through account; its balance moves with its posting")
            params += (account, currency, shard, delta, False)
        cur = self._cursor()
        try:
            cur.execute(_sql(self._dialect, "balances", len(rows)), params)
            if len(cur.fetchall()) != len(rows):  # pragma: no cover  # unguarded rows are never refused
                raise InsufficientFunds("a pass-through balance row refused a move")
        finally:
            cur.close()

    @staticmethod
    def _insufficient(rows: list[tuple[str, str, int, int]], moved: set[tuple[str, str, int]]) -> InsufficientFunds:
        short = [(a, c) for a, c, s, delta in rows if delta < 0 and (a, c, s) not in moved]
        names = ", ".join(f"{a} ({c})" for a, c in short) or "a guarded account"
        return InsufficientFunds(f"{names} would go negative", accounts=[a for a, _ in short])

    def entry(self, entry_id: str) -> PostedEntry:
        """Read a posted entry back; raises NotFound."""
        cur = self._cursor()
        mark = "?" if self._dialect == "sqlite" else "%s"
        try:
            cur.execute(
                f"SELECT kind, created_at, reverses_id FROM journal_entries WHERE id = {mark}",
                (entry_id,),
            )
            head = cur.fetchone()
            if head is None:
                raise NotFound(f"journal entry {entry_id} not found")
            cur.execute(
                f"SELECT account, currency, amount FROM postings WHERE entry_id = {mark} ORDER BY id",
                (entry_id,),
            )
            legs = tuple(Posting(a, Money(int(amt), c)) for a, c, amt in cur.fetchall())
        finally:
            cur.close()
        created = head[1]
        if isinstance(created, str):
            created = datetime.strptime(created, _SQLITE_TS).replace(tzinfo=UTC)
        return PostedEntry(entry_id, head[0], created, legs, head[2])

    def reverse(self, entry_id: str, *, now: datetime, reason: str, request_id: str | None = None) -> PostedEntry:
        """Post the entry that undoes `entry_id`. An entry is reversed at most once.

        Raises NotFound, IllegalTransition (already reversed, or itself a reversal) and
        InsufficientFunds (the money has moved on since).
        """
        original = self.entry(entry_id)
        if original.reverses is not None:
            raise IllegalTransition(f"{entry_id} is itself a reversal; post a new entry instead")
        mark = "?" if self._dialect == "sqlite" else "%s"
        cur = self._cursor()
        try:
            cur.execute(f"SELECT id FROM journal_entries WHERE reverses_id = {mark}", (entry_id,))
            if cur.fetchone() is not None:
                raise IllegalTransition(f"{entry_id} is already reversed")
        finally:
            cur.close()
        reversal = Entry(original.kind, original.postings).reversal(entry_id, memo=reason)
        try:
            return self.post(reversal, now=now, request_id=request_id)
        except Exception as exc:
            # Two concurrent reversals: the unique reverses_id lets exactly one through.
            if "reverses_id" in str(exc) and "nique" in str(exc):
                raise IllegalTransition(f"{entry_id} is already reversed") from None
            raise

    def balance(self, account: str, currency: str) -> int:
        """Balance of one account in one currency (sum of its shards; 0 if never posted)."""
        validate_account(account)
        mark = "?" if self._dialect == "sqlite" else "%s"
        cur = self._cursor()
        try:
            cur.execute(
                f"SELECT COALESCE(SUM(balance), 0) FROM ledger_balances WHERE account = {mark} AND currency = {mark}",
                (account, currency),
            )
            return int(cur.fetchone()[0])
        finally:
            cur.close()

    def balances(self, accounts: Iterable[str]) -> dict[tuple[str, str], int]:
        """Balances of several accounts in every currency they hold, in one query."""
        names = [validate_account(a) for a in accounts]
        if not names:
            return {}
        mark = "?" if self._dialect == "sqlite" else "%s"
        cur = self._cursor()
        try:
            cur.execute(
                "SELECT account, currency, SUM(balance) FROM ledger_balances"
                f" WHERE account IN ({', '.join([mark] * len(names))}) GROUP BY account, currency",
                names,
            )
            return {(a, c): int(b) for a, c, b in cur.fetchall()}
        finally:
            cur.close()

    def trial_balance(self) -> list[TrialBalanceLine]:
        """Per currency, the totals of debit and credit account balances (equal when sound)."""
        cur = self._cursor()
        try:
            cur.execute(
                "SELECT currency,"
                " COALESCE(SUM(CASE WHEN total < 0 THEN -total ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN total > 0 THEN total ELSE 0 END), 0)"
                " FROM (SELECT account, currency, SUM(balance) AS total FROM ledger_balances"
                "       GROUP BY account, currency) AS accounts"
                " GROUP BY currency ORDER BY currency"
            )
            return [TrialBalanceLine(c, int(d), int(k)) for c, d, k in cur.fetchall()]
        finally:
            cur.close()


@lru_cache(maxsize=64)
def _sqlite_ts(when: datetime) -> str:
    """SQLite's stored form of `when`; cached, since one request posts several entries at one `now`."""
    return when.astimezone(UTC).strftime(_SQLITE_TS)


def _shard(account: str) -> int:
    return _pick_shard(rule_for(account).shards)


def _pick_shard(shards: int) -> int:
    # Any shard will do: the balance is their sum. Random spreads concurrent writers.
    return random.randrange(shards) if shards > 1 else 0  # noqa: S311  # load spreading, not crypto


@dataclass(frozen=True, slots=True)
class PostingStatement:
    """`entry` as members of one PostgreSQL WITH statement, posted only if `driver` yields a row.

    For hot paths that must be one round trip: the caller puts its own data-modifying CTE
    (say, the order insert) first and names it as the driver; the entry, its postings and
    its guarded balance upserts then run in the same statement, in the same sorted lock
    order as `Ledger.post`. `balances_cte` returns one row per balance row moved; the
    caller compares that count with `balance_rows`. Entries that debit a guarded account
    are refused here (they need `Ledger.post`'s check of inserted rows).
    """

    ctes: tuple[str, ...]
    params: tuple[Any, ...]
    balance_rows: int
    balances_cte: str
    # Balance moves of pass-through accounts left out of the statement (`defer_pass_through`),
    # for `Ledger.move_pass_through` to apply before the transaction commits.
    deferred: tuple[tuple[str, str, int, int], ...] = ()


def posting_statement(
    entry: Entry,
    *,
    entry_id: str,
    now: datetime,
    request_id: str | None,
    driver: str,
    prefix: str = "ledger",
    defer_pass_through: bool = False,
) -> PostingStatement:
    """With `defer_pass_through`, the balance rows of sharded platform accounts (clearing,
    in transit) are not moved by the statement but returned as `deferred`. A transaction
    that has more to do after this statement applies them as its last statement instead:
    otherwise it holds the shard's row lock for all of its remaining round trips, and every
    one-statement intake that picks the same shard waits that long behind it.

    Deferring takes the shard's lock last rather than in sorted account order. That cannot
    deadlock only while every other row the transaction locks is one no other transaction
    can reach, such as the rows of an order this transaction inserted (what intake defers
    for). Do not defer in a transaction that also locks rows others can lock.
    """
    rows = sorted((account, currency, _shard(account), delta) for (account, currency), delta in entry.net.items())
    if any(delta < 0 and rule_for(account).non_negative for account, _, _, delta in rows):
        # A guarded debit needs the refused-row check of Ledger.post; this form is for inflows.
        raise ValueError("posting_statement takes entries without guarded debits; use Ledger.post")
    deferred: tuple[tuple[str, str, int, int], ...] = ()
    if defer_pass_through:
        deferred = tuple(row for row in rows if rule_for(row[0]).shards > 1)
        rows = [row for row in rows if rule_for(row[0]).shards == 1]
        if not rows:
            raise ValueError("posting_statement must move at least one balance row itself")
    ctes = _posting_ctes(len(entry.postings), len(rows), driver, prefix)
    params: list[Any] = [entry_id, entry.kind, now, entry.reverses, request_id, entry.memo, now]
    for p in entry.postings:
        params += (p.account, p.amount.currency, p.amount.amount_minor)
    for account, currency, shard, delta in rows:
        params += (account, currency, shard, delta, rule_for(account).non_negative and delta > 0)
    return PostingStatement(ctes, tuple(params), len(rows), f"{prefix}_balances", deferred)


@lru_cache(maxsize=64)
def _posting_ctes(legs_count: int, moves_count: int, driver: str, prefix: str) -> tuple[str, ...]:
    """The WITH members of `posting_statement`, built once per shape."""
    legs = ", ".join(["(%s, %s, %s::bigint)"] * legs_count)
    moves = ", ".join(["(%s, %s, %s::smallint, %s::bigint, %s::boolean)"] * moves_count)
    entry_cte = (
        f"{prefix}_entry AS (INSERT INTO journal_entries (id, kind, created_at, reverses_id, request_id, memo)"
        f" SELECT %s, %s, %s, %s, %s, %s FROM {driver} RETURNING id)"
    )
    postings_cte = (
        f"{prefix}_postings AS (INSERT INTO postings (entry_id, account, currency, amount, created_at)"
        f" SELECT e.id, v.account, v.currency, v.amount, %s FROM {prefix}_entry e,"
        f" (VALUES {legs}) AS v(account, currency, amount))"
    )
    balances_cte = (
        f"{prefix}_balances AS (INSERT INTO ledger_balances (account, currency, shard, balance, non_negative)"
        f" SELECT v.account, v.currency, v.shard, v.delta, v.guard FROM {driver},"
        f" (VALUES {moves}) AS v(account, currency, shard, delta, guard) ORDER BY 1, 2, 3"
        " ON CONFLICT (account, currency, shard) DO UPDATE SET balance = ledger_balances.balance + excluded.balance"
        " WHERE NOT ledger_balances.non_negative OR ledger_balances.balance + excluded.balance >= 0"
        " RETURNING account, non_negative)"
    )
    return (entry_cte, postings_cte, balances_cte)
