"""The audit hash chain: written with every change, sealed in order, tamper-evident."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, text
from typer.testing import CliRunner

from escrow import audit, events
from escrow.audit import Actor
from escrow.cli import app as cli
from escrow.events import PUBLISH_BATCH_MAX
from escrow.limits import AUDIT_SEAL_BATCH_MAX
from escrow.persistence.db import scan_in_index_order
from tests.conftest import TestDB
from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import DEPOSIT

NOW = datetime(2026, 11, 29, tzinfo=UTC)
ACTOR = Actor("key_test", "finance", request_id="req_1")


def write_records(db: TestDB, n: int) -> None:
    with db.engine.begin() as conn:
        for i in range(n):
            audit.record(conn, ACTOR, "thing.changed", f"obj_{i}", now=NOW, reason=f"reason {i}", data={"i": i})


def tamper(db: TestDB, statement: str) -> None:
    """Change the table as an attacker with database access would: bypassing the triggers."""
    with db.engine.begin() as conn:
        if db.kind == "postgres":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_records_seal_once"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_records_no_delete"))
        conn.execute(text(statement))


def verify_cli(db: TestDB) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["audit", "verify", "--no-seal"], env={"ESCROW_DATABASE_URL": db.url})
    return result.exit_code, result.output


class TestRecording:
    def test_every_state_change_writes_one_record_in_its_transaction(self, api: Api) -> None:
        """A deposit writes its audit record (who, role, what, why, request id) with the change."""
        headers = api.key("finance")
        response = api.client.post(
            "/v1/sellers/s1/deposit",
            json={**DEPOSIT, "reason": "annual deposit"},
            headers={**headers, "X-Request-Id": "req-77"},
        )
        assert response.status_code == 201
        trail = api.client.get("/v1/audit", params={"object_id": "seller:s1"}, headers=api.key("admin")).json()
        assert trail["has_more"] is False
        (entry,) = trail["data"]
        assert entry["action"] == "seller.deposit_recorded"
        assert entry["role"] == "finance" and entry["actor"].startswith("key_")
        assert entry["reason"] == "annual deposit" and entry["request_id"] == "req-77"
        assert entry["data"]["entry_id"] == response.json()["entry_id"]

    def test_a_rolled_back_change_leaves_no_record(self, db: TestDB) -> None:
        with pytest.raises(RuntimeError), db.engine.begin() as conn:
            audit.record(conn, ACTOR, "x", "obj", now=NOW)
            raise RuntimeError("rollback")
        assert db.count("audit_records") == 0

    def test_audit_list_paginates(self, api: Api) -> None:
        """`starting_after` walks the trail without gaps or repeats."""
        headers = api.key("finance")
        for i in range(5):
            api.client.post("/v1/sellers/s1/deposit", json={**DEPOSIT, "reference": f"d{i}"}, headers=headers)
        admin = api.key("admin")
        seen: list[str] = []
        cursor = None
        while True:
            params = {"object_id": "seller:s1", "limit": 2, **({"starting_after": cursor} if cursor else {})}
            page = api.client.get("/v1/audit", params=params, headers=admin).json()
            seen += [r["id"] for r in page["data"]]
            if not page["has_more"]:
                break
            cursor = page["data"][-1]["id"]
        assert len(seen) == len(set(seen)) == 5
        bad = api.client.get("/v1/audit", params={"object_id": "x", "starting_after": "nope"}, headers=admin)
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"


class TestChain:
    def test_sealed_chain_verifies(self, db: TestDB) -> None:
        write_records(db, 30)
        assert audit.seal_all(db.engine) == 30
        result = audit.verify(db.engine)
        assert result.ok and result.sealed == 30 and result.unsealed == 0
        assert verify_cli(db)[0] == 0

    def test_seal_all_returns_while_records_keep_coming(self, db: TestDB) -> None:
        """Under steady intake there is always a newer record; the sealer must still return
        (the worker has other jobs) once it has caught up, and the chain stays intact."""
        stop = threading.Event()

        def intake() -> None:
            while not stop.is_set():
                write_records(db, 3)

        writer = threading.Thread(target=intake)
        writer.start()
        try:
            time.sleep(0.2)
            started = time.monotonic()
            sealed = audit.seal_all(db.engine, batch=50)
            assert sealed > 0 and time.monotonic() - started < 10
        finally:
            stop.set()
            writer.join()
        audit.seal_all(db.engine)
        result = audit.verify(db.engine)
        assert result.ok and result.unsealed == 0

    def test_sealed_records_cannot_be_changed_through_the_database(self, db: TestDB) -> None:
        """The trigger refuses UPDATE and DELETE of a sealed record, and content edits before sealing."""
        write_records(db, 2)
        audit.seal_all(db.engine)
        for statement in ("UPDATE audit_records SET reason = 'x'", "DELETE FROM audit_records"):
            with pytest.raises(Exception, match="audit record"), db.engine.begin() as conn:
                conn.execute(text(statement))
        write_records(db, 1)
        with pytest.raises(Exception, match="audit record"), db.engine.begin() as conn:
            conn.execute(text("UPDATE audit_records SET actor = 'someone else' WHERE hash IS NULL"))

    @pytest.mark.parametrize(
        ("statement", "named"),
        [
            ("UPDATE audit_records SET reason = 'nothing to see' WHERE seq = 5", "seq=5"),
            ("UPDATE audit_records SET data = '{\"i\": 999}' WHERE seq = 7", "seq=7"),
            (
                "UPDATE audit_records SET occurred_at = occurred_at WHERE seq = 1; "
                "UPDATE audit_records SET actor = 'mallory' WHERE seq = 3",
                "seq=3",
            ),
            ("DELETE FROM audit_records WHERE seq = 4", "position 4"),
            ("DELETE FROM audit_records WHERE seq = 10", "removed"),
            (
                "INSERT INTO audit_records"
                " (occurred_at, actor, role, action, object_id, data, chain_pos, prev_hash, hash)"
                " SELECT occurred_at, actor, role, action, object_id, data, 11, hash, hash"
                " FROM audit_records WHERE seq = 10",
                "past the chain's head",
            ),
            (
                "UPDATE audit_records SET chain_pos = CASE seq WHEN 2 THEN 6 WHEN 6 THEN 2 END, "
                "prev_hash = prev_hash WHERE seq IN (2, 6)",
                "position 2",
            ),
        ],
    )
    def test_tampering_is_detected_and_named(self, db: TestDB, statement: str, named: str) -> None:
        """Editing, reordering or removing any sealed record makes `escrow audit verify` fail, naming it."""
        write_records(db, 10)
        audit.seal_all(db.engine)
        if "chain_pos = CASE" in statement:
            tamper(db, "UPDATE audit_records SET chain_pos = -seq WHERE seq IN (2, 6)")
            tamper(
                db, "UPDATE audit_records SET chain_pos = CASE seq WHEN 2 THEN 6 WHEN 6 THEN 2 END WHERE seq IN (2, 6)"
            )
        else:
            for part in statement.split("; "):
                tamper(db, part)
        code, output = verify_cli(db)
        assert code != 0
        assert "BROKEN" in output and named in output, output

    def test_a_seal_committed_while_verifying_is_not_tampering(
        self, db: TestDB, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On PostgreSQL each page of the chain is read in a fresh snapshot: a sealer committing
        between the pages moved the head past what was verified, which read as records removed."""
        write_records(db, 5)
        audit.seal_all(db.engine)
        write_records(db, 3)
        pages = audit._sealed

        def sealed_meanwhile(conn: Connection, upto: int) -> Iterator[Any]:
            yield from pages(conn, upto)
            if db.kind == "postgres":  # after the last page; SQLite's reader holds the write lock
                assert audit.seal(db.engine) == 3

        monkeypatch.setattr(audit, "_sealed", sealed_meanwhile)
        result = audit.verify(db.engine)
        assert result.ok, result.problem
        assert result.sealed == 5
        monkeypatch.undo()
        audit.seal_all(db.engine)
        assert audit.verify(db.engine).sealed == 8

    def test_records_committed_late_are_sealed_later_without_forking(self, db: TestDB) -> None:
        """A record that commits after later ones were sealed is appended, not inserted back."""
        write_records(db, 3)
        audit.seal_all(db.engine)
        write_records(db, 2)
        audit.seal_all(db.engine)
        result = audit.verify(db.engine)
        assert result.ok and result.sealed == 5


def test_concurrent_writers_and_sealers_never_fork_the_chain(pg_db: TestDB) -> None:
    """8 writer threads and 3 sealer threads on PostgreSQL: one linear chain holding every record."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(60):
                with pg_db.engine.begin() as conn:
                    audit.record(conn, ACTOR, "w", f"obj_{n}_{i}", now=NOW)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def sealer() -> None:
        try:
            while not stop.is_set():
                audit.seal(pg_db.engine, batch=7)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    sealers = [threading.Thread(target=sealer) for _ in range(3)]
    for t in writers + sealers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in sealers:
        t.join()
    audit.seal_all(pg_db.engine)

    assert errors == []
    result = audit.verify(pg_db.engine)
    assert result.ok and result.sealed == 480 and result.unsealed == 0
    with pg_db.engine.connect() as conn:
        positions = _positions(conn)
    assert positions == list(range(1, 481))


def _positions(conn: Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute(text("SELECT chain_pos FROM audit_records ORDER BY chain_pos"))]


def test_sealer_and_publisher_read_their_partial_indexes_in_order(pg_db: TestDB) -> None:
    """Sealing and publishing leave a dead entry in their partial index per row. The lookups
    must be index scans, which mark dead entries and skip them next round; a bitmap scan
    would visit every dead row's heap page on every worker round (autovacuum can be off)."""
    with pg_db.engine.begin() as conn:
        for i in range(2_000):
            audit.record(conn, ACTOR, "w", f"obj_{i}", now=NOW)
            events.emit(conn, "thing.changed", {"i": i}, now=NOW)
    audit.seal_all(pg_db.engine)
    events.publish(pg_db.engine)
    for query, index in (
        (audit.unsealed_query(AUDIT_SEAL_BATCH_MAX), "ix_audit_records_unsealed"),
        (events.unpublished_query(PUBLISH_BATCH_MAX), "ix_events_unpublished"),
    ):
        with pg_db.engine.begin() as conn:
            scan_in_index_order(conn)
            sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(conn.execute(text("EXPLAIN " + sql)).scalars())
        assert index in plan and "Bitmap" not in plan and "Sort" not in plan, plan
