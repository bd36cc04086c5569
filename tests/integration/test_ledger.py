"""The ledger on both databases: atomic posting, guards, append-only, reversals, trial balance."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from escrow import audit
from escrow.audit import SYSTEM
from escrow.errors import IllegalTransition, InsufficientFunds, InvalidInput, UnbalancedEntry
from escrow.ledger import Entry, Ledger, Posting, transfer
from escrow.limits import HOT_ACCOUNT_SHARDS
from escrow.money import Money
from escrow.persistence import migrate
from escrow.persistence.db import make_engine
from escrow.persistence.orm import AppendOnlyViolation, PostingRecord
from tests.conftest import TestDB


def eur(n: int) -> Money:
    return Money(n, "EUR")


def post(db: TestDB, entry: Entry, now: datetime) -> str:
    with db.engine.begin() as conn:
        return Ledger(conn).post(entry, now=now).id


def balance(db: TestDB, account: str, currency: str = "EUR") -> int:
    with db.engine.connect() as conn:
        return Ledger(conn).balance(account, currency)


def assert_books_sound(db: TestDB) -> None:
    """Every balance row equals the sum of its postings, and the trial balance is zero."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT b.account, b.currency, b.total, COALESCE(p.total, 0) FROM"
                " (SELECT account, currency, SUM(balance) AS total FROM ledger_balances GROUP BY account, currency) b"
                " LEFT JOIN (SELECT account, currency, SUM(amount) AS total FROM postings GROUP BY account, currency) p"
                " ON p.account = b.account AND p.currency = b.currency"
            )
        ).all()
        for account, currency, materialized, summed in rows:
            assert materialized == summed, (account, currency)
        unbalanced = conn.execute(
            text("SELECT entry_id, currency FROM postings GROUP BY entry_id, currency HAVING SUM(amount) <> 0")
        ).all()
        assert unbalanced == []
        lines = Ledger(conn).trial_balance()
        assert all(line.total_debits == line.total_credits for line in lines)
        negatives = conn.execute(text("SELECT account FROM ledger_balances WHERE non_negative AND balance < 0")).all()
        assert negatives == []


class TestPosting:
    def test_transfer_moves_both_balances(self, db: TestDB, now: datetime) -> None:
        """A two-leg transfer debits one account and credits the other in the same transaction."""
        post(db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1999)), now)
        assert balance(db, "order:o1:escrow") == 1999
        assert balance(db, "clearing:card") == -1999
        assert_books_sound(db)

    def test_unbalanced_entry_writes_nothing(self, db: TestDB, now: datetime) -> None:
        """An unbalanced entry is refused before any row is written."""
        before = db.counts()
        with pytest.raises(UnbalancedEntry):
            post(db, Entry("x", (Posting("a:1", eur(-1)), Posting("b:1", eur(2)))), now)
        assert db.counts() == before

    def test_entry_that_moves_nothing_writes_nothing(self, db: TestDB, now: datetime) -> None:
        """Legs that cancel out on every account are refused as bad input, not sent as empty SQL."""
        before = db.counts()
        with pytest.raises(InvalidInput, match="cancel out"):
            post(db, Entry("x", (Posting("a:1", eur(-1)), Posting("a:1", eur(1)))), now)
        assert db.counts() == before

    def test_guarded_account_never_goes_negative(self, db: TestDB, now: datetime) -> None:
        """Taking more than an escrow account holds fails and leaves every row as it was."""
        post(db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now)
        before = db.counts()
        with pytest.raises(InsufficientFunds) as err:
            post(db, transfer("hold", "order:o1:escrow", "order:o1:held", eur(1001)), now)
        assert "order:o1:escrow" in err.value.detail
        assert db.counts() == before
        assert balance(db, "order:o1:escrow") == 1000

    def test_first_debit_of_an_unopened_guarded_account_is_refused(self, db: TestDB, now: datetime) -> None:
        """A guarded account that never received money cannot pay anything."""
        with pytest.raises(InsufficientFunds):
            post(db, transfer("x", "seller:s1:payable", "in_transit:payouts", eur(1)), now)
        assert db.count("ledger_balances") == 0

    def test_hot_account_is_spread_over_shards_and_summed(self, db: TestDB, now: datetime) -> None:
        """Many orders through clearing:card land on several shard rows that sum to its balance."""
        for i in range(64):
            post(db, transfer("order_paid", "clearing:card", f"order:o{i}:escrow", eur(100)), now)
        assert balance(db, "clearing:card") == -6400
        with db.engine.connect() as conn:
            shards = conn.execute(
                text("SELECT COUNT(*) FROM ledger_balances WHERE account = 'clearing:card'")
            ).scalar_one()
        assert 1 < shards <= HOT_ACCOUNT_SHARDS
        assert_books_sound(db)

    def test_multi_currency_trial_balance(self, db: TestDB, now: datetime) -> None:
        """The trial balance reports each currency separately, debits equal to credits."""
        post(db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(500)), now)
        post(db, transfer("order_paid", "clearing:bank", "order:o2:escrow", Money(7, "KWD")), now)
        with db.engine.connect() as conn:
            lines = {line.currency: line for line in Ledger(conn).trial_balance()}
        assert (lines["EUR"].total_debits, lines["EUR"].total_credits) == (500, 500)
        assert (lines["KWD"].total_debits, lines["KWD"].total_credits) == (7, 7)


class TestReversal:
    def test_reversal_restores_balances_and_points_back(self, db: TestDB, now: datetime) -> None:
        """A reversal is a new entry that undoes the original; the original stays."""
        post(db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now)
        hold_id = post(db, transfer("hold", "order:o1:escrow", "order:o1:held", eur(300)), now)
        with db.engine.begin() as conn:
            back = Ledger(conn).reverse(hold_id, now=now, reason="placed in error")
        assert back.reverses == hold_id
        assert balance(db, "order:o1:held") == 0
        assert balance(db, "order:o1:escrow") == 1000
        assert db.count("journal_entries") == 3
        assert_books_sound(db)

    def test_an_entry_is_reversed_at_most_once(self, db: TestDB, now: datetime) -> None:
        """Reversing twice, or reversing a reversal, is an illegal transition."""
        post(db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now)
        first = post(db, transfer("hold", "order:o1:escrow", "order:o1:held", eur(300)), now)
        with db.engine.begin() as conn:
            back = Ledger(conn).reverse(first, now=now, reason="r")
        for target in (first, back.id):
            with pytest.raises(IllegalTransition), db.engine.begin() as conn:
                Ledger(conn).reverse(target, now=now, reason="again")
        assert balance(db, "order:o1:held") == 0

    def test_reversal_is_guarded_too(self, db: TestDB, now: datetime) -> None:
        """Money that moved on cannot be pulled back by a reversal."""
        paid = post(db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now)
        post(db, transfer("hold", "order:o1:escrow", "order:o1:held", eur(1000)), now)
        with pytest.raises(InsufficientFunds), db.engine.begin() as conn:
            Ledger(conn).reverse(paid, now=now, reason="r")
        assert_books_sound(db)


class TestAppendOnly:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE postings SET amount = amount + 1",
            "DELETE FROM postings",
            "UPDATE journal_entries SET kind = 'forged'",
            "DELETE FROM journal_entries",
        ],
    )
    def test_database_refuses_changes_to_posted_records(self, db: TestDB, now: datetime, statement: str) -> None:
        """UPDATE and DELETE of postings and entries fail in the database itself."""
        post(db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now)
        with pytest.raises(Exception, match="append-only"), db.engine.begin() as conn:
            conn.execute(text(statement))
        assert balance(db, "order:o1:escrow") == 1000
        assert db.count("postings") == 2

    @pytest.mark.parametrize(
        "statement",
        [
            "TRUNCATE postings",
            "TRUNCATE journal_entries CASCADE",
            "TRUNCATE audit_records",
            "TRUNCATE ledger_balances, postings, journal_entries",
        ],
    )
    def test_postgres_refuses_truncate_of_the_books(self, pg_db: TestDB, now: datetime, statement: str) -> None:
        """TRUNCATE fires no row trigger; a statement trigger refuses it (SQLite has no TRUNCATE)."""
        post(pg_db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now)
        with pg_db.engine.begin() as conn:
            audit.record(conn, SYSTEM, "test.recorded", "o1", now=now)
        with pytest.raises(Exception, match=r"append-only table .*: TRUNCATE refused"), pg_db.engine.begin() as conn:
            conn.execute(text(statement))
        assert pg_db.count("postings") == 2
        assert pg_db.count("journal_entries") == 1
        assert pg_db.count("audit_records") == 1
        assert_books_sound(pg_db)

    def test_orm_refuses_update_and_delete(self, db: TestDB, now: datetime) -> None:
        """The ORM mapping of postings refuses to flush a change or a deletion."""
        post(db, transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now)
        with Session(db.engine) as session:
            record = session.scalars(select(PostingRecord).limit(1)).one()
            record.amount = 1
            with pytest.raises(AppendOnlyViolation):
                session.flush()
            session.rollback()
            session.delete(session.scalars(select(PostingRecord).limit(1)).one())
            with pytest.raises(AppendOnlyViolation):
                session.flush()
        assert_books_sound(db)


class TestSqliteWriterLock:
    def test_a_transaction_holds_the_write_lock_from_its_start(self, tmp_path: Path, now: datetime) -> None:
        """SQLite transactions begin IMMEDIATE: the writer lock is taken before the first read.

        A transaction that read first and took the lock at its first write could fail halfway
        ("database is locked") after acting on what it read; this one waits at its start
        instead. A second writer is kept out until the first commits, and is let in after.
        """
        path = tmp_path / "lock.db"
        migrate.upgrade(f"sqlite:///{path}")
        engine = make_engine(f"sqlite:///{path}")
        other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
        try:
            with engine.begin() as conn:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
                Ledger(conn).post(transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now=now)
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            with engine.begin() as conn:
                assert Ledger(conn).balance("order:o1:escrow", "EUR") == 1000
                savepoint = conn.begin_nested()
                Ledger(conn).post(transfer("hold", "order:o1:escrow", "order:o1:held", eur(300)), now=now)
                savepoint.rollback()
                assert Ledger(conn).balance("order:o1:held", "EUR") == 0
        finally:
            other.close()
            engine.dispose()

    def test_a_commit_after_sqlite_rolled_back_on_its_own_fails(self, tmp_path: Path, now: datetime) -> None:
        """Some errors (a full disk, an OR ROLLBACK conflict) end SQLite's transaction by themselves.

        If the caller went on anyway, its commit must fail, not report success for writes that
        were rolled back. The sqlite3 module's commit() does nothing outside a transaction; the
        engine sends COMMIT as a statement, which SQLite refuses then.
        """
        path = tmp_path / "auto.db"
        migrate.upgrade(f"sqlite:///{path}")
        engine = make_engine(f"sqlite:///{path}")
        try:
            with pytest.raises(DBAPIError, match="no transaction is active"), engine.begin() as conn:
                Ledger(conn).post(transfer("order_paid", "clearing:card", "order:o1:escrow", eur(1000)), now=now)
                conn.exec_driver_sql("CREATE TEMP TABLE once (k INTEGER PRIMARY KEY)")
                conn.exec_driver_sql("INSERT INTO once VALUES (1)")
                with pytest.raises(IntegrityError):  # rolls the whole transaction back, then raises
                    conn.exec_driver_sql("INSERT OR ROLLBACK INTO once VALUES (1)")
            with engine.connect() as conn:
                assert Ledger(conn).balance("order:o1:escrow", "EUR") == 0
        finally:
            engine.dispose()


class TestPostgresPostLocks:
    def test_a_post_waiting_on_its_entry_holds_no_balance_row(self, pg_db: TestDB, now: datetime) -> None:
        """On PostgreSQL a post is one statement; its balance rows are locked after its entry
        is written, as when they were three statements. A post whose entry insert waits
        (here on another transaction's uncommitted reversal of the same entry) must not sit
        on balance rows meanwhile: a shared platform row would queue everyone behind it."""
        first = post(pg_db, transfer("order_paid", "clearing:card", "order:a:escrow", eur(100)), now)
        post(pg_db, transfer("order_paid", "clearing:card", "order:b:escrow", eur(100)), now)
        blocker = pg_db.engine.connect()
        blocker.begin()
        blocker.execute(
            text("INSERT INTO journal_entries (id, kind, created_at, reverses_id) VALUES ('ent_blocker', 'x', :t, :r)"),
            {"t": now, "r": first},
        )
        outcome: list[BaseException | str] = []

        def waiting_post() -> None:
            try:
                with pg_db.engine.begin() as conn:
                    entry = Entry("x", (Posting("order:b:escrow", eur(-1)), Posting("order:b:held", eur(1))))
                    Ledger(conn).post(Entry(entry.kind, entry.postings, reverses=first), now=now)
                outcome.append("posted")
            except BaseException as exc:  # reported to the test thread below
                outcome.append(exc)

        thread = threading.Thread(target=waiting_post)
        thread.start()
        try:
            with pg_db.engine.connect() as probe:
                probe.execute(text("SET lock_timeout = '2s'"))
                # Wait until the post is really queued behind the blocker, then probe its rows.
                for _ in range(200):
                    waiting = probe.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                        )
                    ).scalar_one()
                    if waiting:
                        break
                    threading.Event().wait(0.01)
                assert waiting, "the post never waited on the blocker"
                probe.execute(text("UPDATE ledger_balances SET balance = balance WHERE account = 'order:b:escrow'"))
                probe.rollback()
        finally:
            blocker.rollback()
            blocker.close()
            thread.join(10)
        assert outcome == ["posted"]
        assert balance(pg_db, "order:b:held") == 1
        assert_books_sound(pg_db)
