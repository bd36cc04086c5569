"""The documented commands over a real socket: migrate, keys, serve, a real request, audit verify."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ESCROW = [sys.executable, "-m", "escrow"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ESCROW_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'escrow.db'}",
        "ESCROW_LOG_LEVEL": "warning",
    }


def escrow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ESCROW, *args], env=env, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[str]:
    assert escrow(env, "migrate").returncode == 0
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603
        [*ESCROW, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("escrow serve did not become ready within 30 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_migrate_keys_serve_and_a_real_request(env: dict[str, str], server: str) -> None:
    """Demo keys for every role are printed once; a finance key records a deposit over HTTP, replayed idempotently."""
    demo = escrow(env, "keys", "demo")
    assert demo.returncode == 0
    keys = dict(line.split() for line in demo.stdout.splitlines())
    assert set(keys) == {
        "checkout",
        "cp_agent",
        "cp_supervisor",
        "ip_staff",
        "finance",
        "legal",
        "rights_holder",
        "admin",
    }
    headers = {"Authorization": f"Bearer {keys['finance']}", "Idempotency-Key": "dep-1", "X-Request-Id": "req-e2e-1"}
    body = {"amount": {"amount": 250000, "currency": "EUR"}, "reference": "SEPA 1", "reason": "security deposit"}
    first = httpx.post(f"{server}/v1/sellers/seller-42/deposit", json=body, headers=headers)
    again = httpx.post(f"{server}/v1/sellers/seller-42/deposit", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.headers["x-request-id"] == "req-e2e-1" and again.headers["idempotent-replayed"] == "true"
    assert first.json()["deposit"] == {"amount": 250000, "currency": "EUR"}
    trial = httpx.get(f"{server}/v1/ledger/trial-balance", headers={"Authorization": f"Bearer {keys['finance']}"})
    assert trial.json() == {
        "balanced": True,
        "currencies": [{"currency": "EUR", "total_debits": 250000, "total_credits": 250000}],
    }
    assert httpx.get(f"{server}/docs").status_code == 200
    assert httpx.get(f"{server}/v1/ledger/trial-balance").status_code == 401
    verified = escrow(env, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "intact" in verified.stdout


def test_keys_create_prints_once_and_refuses_bad_roles(env: dict[str, str]) -> None:
    assert escrow(env, "migrate").returncode == 0
    created = escrow(env, "keys", "create", "--role", "rights_holder", "--party", "rh-1", "--name", "Acme legal")
    assert created.returncode == 0 and created.stdout.split()[2].startswith("esk_key_")
    assert escrow(env, "keys", "create", "--role", "rights_holder", "--name", "no party").returncode == 2
    assert escrow(env, "keys", "create", "--role", "emperor", "--name", "x").returncode == 2
    key_id = created.stdout.split()[0]
    assert escrow(env, "keys", "revoke", key_id).returncode == 0
    assert escrow(env, "keys", "revoke", key_id).returncode == 1
