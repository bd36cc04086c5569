"""`escrow serve --workers 2`: a due base is built in the master, and the workers are replaced by
fresh forks that share it, one at a time, with every request answered meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from escrow.persistence.db import make_engine
from escrow.persistence.tables import findings
from escrow.screening.registry import OVERLAY_FINDINGS_MAX
from escrow.service.findings import bump_revision
from tests.e2e.test_serve_workers import ESCROW, READY_S, VISIBLE_S, children, escrow, free_port

ROLL_S = 30.0  # a check (1 s), a build (milliseconds here), two fresh workers booting: generous for a loaded machine
TITLE = {"title": "Vintage G.u.c.c.i bag 1:1"}


def insert_fillers(url: str, count: int) -> None:
    """`count` listing findings straight into the table with one revision bump, as a bulk import
    would: enough to push every overlay past its bound at once."""
    now = datetime.now(UTC)
    blank = dict.fromkeys(("rights_holder_id", "jurisdiction", "severity", "evidence_url", "expires_at"))
    rows = [
        {**blank, "id": f"fnd_fill{i:06d}", "kind": "listing", "status": "suspected", "brand": "Fill",
         "patterns": [], "seller_ids": [], "listing_ids": [f"l-fill-{i}"], "created_by": "test",
         "created_at": now, "updated_at": now}
        for i in range(count)
    ]  # fmt: skip
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            conn.execute(findings.insert(), rows)
            bump_revision(conn)
    finally:
        engine.dispose()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[bytes], Path]]:
    """A migrated SQLite database and `escrow serve --workers 2` over it, logging at info."""
    url = f"sqlite:///{tmp_path / 'var' / 'escrow.db'}"
    env = {**os.environ, "ESCROW_DATABASE_URL": url, "ESCROW_LOG_LEVEL": "info"}
    migrated = escrow(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    made = escrow(env, "keys", "create", "--role", "ip_staff", "--name", "t")
    assert made.returncode == 0, made.stderr
    headers = {"Authorization": f"Bearer {made.stdout.split()[-1]}"}
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(  # noqa: S603
        [*ESCROW, "serve", "--port", str(port), "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_S
        while len(children(proc.pid)) < 2 or not ready(base):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"not ready within {READY_S} s"
            time.sleep(0.1)
        yield base, headers, proc, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_base_due_in_the_master_replaces_the_workers_and_changes_still_show(
    served: tuple[str, dict[str, str], subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    """Past the overlay's bound, the master builds the base and forks two new workers in place of the
    old ones; every screen during the roll is answered, and a change before and after it shows."""
    base, headers, proc, log_path = served
    url = f"sqlite:///{tmp_path / 'var' / 'escrow.db'}"

    def screen() -> str:
        with httpx.Client(base_url=base, timeout=5) as client:  # a new connection: any worker may answer
            response = client.post("/v1/screen", json=TITLE, headers=headers)
        assert response.status_code == 200, response.text
        return str(response.json()["decision"])

    def shows(decision: str) -> None:
        deadline = time.monotonic() + VISIBLE_S
        while screen() != decision:
            assert time.monotonic() < deadline, f"no {decision!r} within {VISIBLE_S} s"
            time.sleep(0.05)
        time.sleep(0.5)  # past one poll of every worker
        assert [screen() for _ in range(8)] == [decision] * 8

    finding = {"kind": "keyword", "brand": "Gucci", "patterns": ["gucci"], "status": "confirmed"}
    created = httpx.post(f"{base}/v1/findings", json=finding, headers=headers, timeout=5)
    assert created.status_code == 201, created.text
    shows("hold")
    old = set(children(proc.pid))
    assert len(old) == 2

    insert_fillers(url, OVERLAY_FINDINGS_MAX + 1)
    answered = 0
    deadline = time.monotonic() + ROLL_S
    while (workers := set(children(proc.pid))) & old or len(workers) != 2:
        assert time.monotonic() < deadline, (workers, old, log_path.read_text()[-3000:])
        assert screen() == "hold"  # answered, and right, throughout the roll
        answered += 1
        time.sleep(0.05)
    assert answered > 0
    log = log_path.read_text()
    assert "findings_master_base_built" in log and "findings_workers_rolled" in log
    assert "Traceback" not in log

    shows("hold")  # the new workers, forked with the new base
    dismissed = httpx.post(
        f"{base}/v1/findings/{created.json()['id']}/dismiss", json={"reason": "licensed"}, headers=headers, timeout=5
    )
    assert dismissed.status_code == 200, dismissed.text
    shows("pass")
    assert set(children(proc.pid)) == workers  # no further roll: the new base is not due
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
