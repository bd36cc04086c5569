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


def _established_per_worker(workers: list[int], port: int) -> dict[int, int]:
    """How many of the server's established connections each worker holds (from /proc)."""
    served: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # local port, ESTABLISHED
                served.add(fields[9])  # the socket's inode
    held = {}
    for pid in workers:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.is_symlink()]
        held[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in served)
    return held


def test_connections_opened_together_are_spread_over_the_workers(
    server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Keep-alive connections opened at once (a client pool starting) end up on both workers,
    not all on the one that woke first."""
    base, proc = server
    port = int(base.rsplit(":", 1)[1])
    deadline = time.monotonic() + READY_S
    while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # both workers past start-up and accepting
    connections = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    try:
        for conn in connections:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        for conn in connections:
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "every connection was served"
        held = _established_per_worker(workers, port)
    finally:
        for conn in connections:
            conn.close()
    assert sum(held.values()) == 8, held
    assert min(held.values()) >= 3, held  # an even split is 4:4; first-waker-takes-all gave 8:0 or 7:1
