"""`escrow serve --workers 2` over a real socket: pre-forked workers share one findings matcher
built in the master, and still each see a new finding through their own refresh loop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ESCROW = [sys.executable, "-m", "escrow"]
READY_S = 60
VISIBLE_S = 5.0  # a change must show within a poll (0.2 s); generous for a loaded CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def escrow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ESCROW, *args], env=env, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ESCROW_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'escrow.db'}",
        "ESCROW_LOG_LEVEL": "warning",
    }


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    migrated = escrow(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603
        [*ESCROW, "serve", "--port", str(port), "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail(f"escrow serve --workers 2 was not ready within {READY_S} s")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()


def test_two_preforked_workers_see_a_new_finding(
    env: dict[str, str], server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """A finding created through one request holds orders on every later screen, whichever worker
    answers, within a bounded wait; SIGTERM stops master and workers cleanly."""
    base, proc = server
    deadline = time.monotonic() + READY_S  # ready means one worker answers; the other may still be starting
    while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2, workers
    made = escrow(env, "keys", "create", "--role", "ip_staff", "--name", "t")
    assert made.returncode == 0, made.stderr
    headers = {"Authorization": f"Bearer {made.stdout.split()[-1]}"}
    title = {"title": "Vintage G.u.c.c.i bag 1:1"}

    def screen() -> str:
        with httpx.Client(base_url=base, timeout=5) as client:  # a new connection: any worker may answer
            response = client.post("/v1/screen", json=title, headers=headers)
        assert response.status_code == 200, response.text
        return str(response.json()["decision"])

    assert [screen() for _ in range(6)] == ["pass"] * 6
    finding = {"kind": "keyword", "brand": "Gucci", "patterns": ["gucci"], "status": "confirmed"}
    created = httpx.post(f"{base}/v1/findings", json=finding, headers=headers, timeout=5)
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + VISIBLE_S
    while screen() != "hold":
        assert time.monotonic() < deadline, "no worker saw the new finding"
        time.sleep(0.05)
    time.sleep(0.5)  # past one poll of every worker
    assert [screen() for _ in range(12)] == ["hold"] * 12
    assert children(proc.pid) == workers  # the same two workers served it all
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
