"""`escrow worker`: one job that fails does not stop the others in the same round."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from escrow import audit, cli, events, logs
from escrow.persistence.db import make_engine
from tests.conftest import TestDB
from tests.integration.test_audit_chain import ACTOR, NOW


class _RoundOver(BaseException):
    """Raised from the worker's sleep: ends the endless loop after one round."""


def test_a_failing_job_is_logged_and_the_rest_of_the_round_runs(db: TestDB, monkeypatch: pytest.MonkeyPatch) -> None:
    with db.engine.begin() as conn:
        audit.record(conn, ACTOR, "thing.changed", "obj_1", now=NOW)
        events.emit(conn, "thing.changed", {"id": "obj_1"}, now=NOW)
    failures: list[str] = []

    def hold_expiry_breaks(*_: Any, **__: Any) -> int:
        failures.append("expire_holds")
        raise RuntimeError("a row the job cannot handle")

    def one_round(_: float) -> None:
        raise _RoundOver

    monkeypatch.setattr(cli, "expire_due", hold_expiry_breaks)  # the first job of the round
    monkeypatch.setattr(cli.time, "sleep", one_round)
    monkeypatch.setattr(cli, "gc", SimpleNamespace(collect=lambda: 0, freeze=lambda: None))  # not the test's heap
    monkeypatch.setattr(logs, "configure", lambda *_: None)  # nor the test process's logging
    with pytest.raises(_RoundOver):
        CliRunner().invoke(cli.app, ["worker"], env={"ESCROW_DATABASE_URL": db.url})
    assert failures == ["expire_holds"]
    engine = make_engine(db.url, pool_size=1)
    try:
        assert audit.verify(engine).sealed == 1  # sealing ran after the failed job
        with engine.connect() as conn:
            positions = conn.execute(text("SELECT position FROM events")).scalars().all()
        assert positions == [1]  # published after the failed job
    finally:
        engine.dispose()
