"""End to end over real sockets: the service and the simulator under uvicorn, `escrow worker` as processes.

The crash test SIGKILLs workers at random points while they deliver payouts and refunds,
restarts them, and proves with the simulator's books that every instruction was executed
exactly once and that the ledger moved what the simulator moved. Another test runs three
workers at once against one PostgreSQL and proves no instruction was sent twice.
"""

from __future__ import annotations

import base64
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.fernet import Fernet
from sqlalchemy import text

from escrow import bootstrap
from escrow.ledger import Ledger
from escrow.settings import load_settings
from simulators import SimClock, SimulatorConfig, create_app
from tests.conftest import TestDB
from tests.integration.test_ledger import assert_books_sound

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"e2e-outbox-webhook-secret-00001").decode()
ACCOUNT_KEY = Fernet.generate_key().decode()
WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """Simulator and service on sockets, over one PostgreSQL database."""

    db: TestDB
    sim_url: str
    svc_url: str
    http: httpx.Client
    keys: dict[str, str]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESCROW_")}
        env.update(
            ESCROW_DATABASE_URL=self.db.url,
            ESCROW_BANK_URL=self.sim_url,
            ESCROW_CARD_URL=self.sim_url,
            ESCROW_ACCOUNT_KEYS=ACCOUNT_KEY,
            ESCROW_LOG_LEVEL="error",
            ESCROW_OUTBOX_LEASE_MS="1500",
            ESCROW_OUTBOX_POLL_MS="300",
            ESCROW_OUTBOX_BACKOFF_BASE_MS="50",
            ESCROW_OUTBOX_BACKOFF_CAP_MS="500",
            ESCROW_OUTBOX_ATTEMPTS_MAX="100",
            ESCROW_RAIL_TIMEOUT_MS="5000",
            **extra,
        )
        return env

    def worker(self, **extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "escrow", "worker", "--interval-ms", "50"],
            cwd=ROOT,
            env=self.env(**extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def call(self, role: str, method: str, path: str, body: Any = None) -> httpx.Response:
        response = self.http.request(
            method, f"{self.svc_url}{path}", json=body, headers={"Authorization": self.keys[role]}
        )
        assert response.status_code < 300, response.text
        return response

    def workload(self, payouts: int, refunds: int, rng: random.Random) -> None:
        """`payouts` sellers with confirmed orders and accounts, `refunds` refunded card orders, over HTTP."""
        for i in range(payouts + refunds):
            amount = rng.randrange(1_000, 500_000)
            body = {
                "order_id": f"o-{i}", "buyer_id": f"b-{i}", "seller_id": f"s-{i}", "listing_id": f"l-{i}",
                "title": "Leather wallet", "amount": {"amount": amount, "currency": "EUR"},
                "payment": {"method": "card", "reference": f"pay-{i}"}, "jurisdiction": "EU",
            }  # fmt: skip
            self.call("checkout", "POST", "/v1/orders", body)
            if i < payouts:
                self.call("checkout", "POST", f"/v1/orders/o-{i}/confirm")
                account = {"holder_name": f"Seller {i}", "iban": "FR1420041010050500013M02606"}
                self.call("finance", "PUT", f"/v1/parties/s-{i}/payout-account", account)
            else:
                self.call("cp_agent", "POST", f"/v1/orders/o-{i}/refund", {"reason": "cancelled"})

    def finished(self, payouts: int, refunds: int) -> bool:
        with self.db.engine.connect() as conn:
            paid = conn.execute(text("SELECT COUNT(*) FROM payouts WHERE status = 'paid'")).scalar_one()
            done = conn.execute(text("SELECT COUNT(*) FROM order_refunds WHERE status = 'succeeded'")).scalar_one()
        return int(paid) == payouts and int(done) == refunds

    def books(self) -> dict[str, Any]:
        books: dict[str, Any] = self.http.get(f"{self.sim_url}/control/ledger").json()
        return books


@contextmanager
def stack(db: TestDB, *, settle_s: float = 0.3) -> Iterator[Stack]:
    sim_port = free_port()
    svc_port = free_port()
    sim_url, svc_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{svc_port}"
    sim_app = create_app(
        SimulatorConfig.with_webhook_base(
            f"{svc_url}/v1/webhooks",
            SECRET,
            clock=SimClock.wall(),
            settle_delay_s=settle_s,
            card_settle_delay_s=settle_s,
            tick_interval_s=0.1,
            callback_retry_base_s=0.2,
            magic_values=False,
            timeout_s=2.0,
        )
    )
    settings = load_settings(
        database_url=db.url,
        bank_url=sim_url,
        card_url=sim_url,
        webhook_secrets_bank=SECRET,
        webhook_secrets_card=SECRET,
        account_keys=ACCOUNT_KEY,
        audit_seal_interval_ms=0,
        log_level="error",
    )
    service = bootstrap.app(settings)
    keys = {}
    from escrow.auth import create_key
    from escrow.ports import SystemClock

    with db.engine.begin() as conn:
        for role in ("checkout", "finance", "cp_agent"):
            _, key = create_key(
                conn, role=role, name="e2e", party_id=None, now=SystemClock().now(),
                pepper=settings.api_key_pepper.get_secret_value().encode(),
            )  # fmt: skip
            keys[role] = f"Bearer {key}"
    with serve_on(sim_app, sim_port), serve_on(service, svc_port), httpx.Client(timeout=30) as http:
        yield Stack(db, sim_url, svc_url, http, keys)


@contextmanager
def serve_on(app: Any, port: int) -> Iterator[str]:
    """Run an ASGI app under uvicorn on `port` in a thread (bounded start-up wait)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_ready(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> bool:
    """Until the worker says it started (bounded); False if it died first."""
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], timeout_s)
    return bool(ready) and b"worker started" in proc.stderr.readline()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


def drain(s: Stack, payouts: int, refunds: int, workers: int = 1) -> None:
    """Run unkilled workers until everything is paid and refunded (bounded)."""
    procs = [s.worker() for _ in range(workers)]
    try:
        deadline = time.monotonic() + WAIT_S
        while not s.finished(payouts, refunds):
            assert time.monotonic() < deadline, "the outbox did not finish"
            assert all(p.poll() is None for p in procs), "a worker died"
            time.sleep(0.1)
    finally:
        for p in procs:
            stop(p)


def assert_exactly_once_and_books_equal_ledger(s: Stack, payouts: int, refunds: int) -> dict[str, Any]:
    books = s.books()
    assert books["executed_more_than_once"] == []
    with s.db.engine.connect() as conn:
        pays = conn.execute(text("SELECT end_to_end_id, amount, status FROM payouts")).all()
        refs = conn.execute(text("SELECT id, amount, status FROM order_refunds")).all()
        ledger = Ledger(conn)
        assert ledger.balance("in_transit:payouts", "EUR") == 0
        assert ledger.balance("in_transit:refunds", "EUR") == 0
        clearing_bank = ledger.balance("clearing:bank", "EUR")
        clearing_card = ledger.balance("clearing:card", "EUR")
        dead = conn.execute(text("SELECT COUNT(*) FROM outbox_instructions WHERE state <> 'done'")).scalar_one()
    assert len(pays) == payouts and len(refs) == refunds and dead == 0
    executions = books["executions"]
    for e2e, _, status in pays:
        assert status == "paid" and executions.get(f"bank:{e2e}") == 1, e2e  # at least once and at most once
    for ref, _, status in refs:
        assert status == "succeeded" and executions.get(f"card:{ref}") == 1, ref
    assert len(executions) == payouts + refunds
    transfers = {t["end_to_end_id"]: t["amount"]["amount"] for t in books["bank"]["transfers"]}
    assert transfers == {e2e: amount for e2e, amount, _ in pays}
    [bank] = books["bank"]["totals"]
    [card] = books["card"]["totals"]
    assert bank["net_moved"] == sum(a for _, a, _ in pays) == clearing_bank
    assert card["refunded"] == sum(a for _, a, _ in refs)
    with s.db.engine.connect() as conn:
        card_in = conn.execute(text("SELECT SUM(amount) FROM orders")).scalar_one()
    assert clearing_card == -int(card_in) + card["refunded"]
    assert_books_sound(s.db)
    return books


PAYOUTS = 30
REFUNDS = 30
KILLS_PER_SEED = 51  # three workers killed side by side: 102 kills over the two seeds


@pytest.mark.parametrize("seed", [1, 2])
def test_workers_killed_at_random_points_execute_each_instruction_exactly_once(pg_db: TestDB, seed: int) -> None:
    """SIGKILL three delivering workers again and again; each payout and refund moves money exactly once."""
    rng = random.Random(seed)
    with stack(pg_db) as s:
        s.workload(PAYOUTS, REFUNDS, rng)
        for op in ("bank.credit_transfer", "card.refund"):  # slow the rail so kills land mid-delivery
            rule = {"operation": op, "fault": "slow", "delay_s": 0.04, "times": None}
            assert s.http.post(f"{s.sim_url}/control/faults", json=rule).status_code == 201
        kills = 0
        lanes = [s.worker(ESCROW_OUTBOX_BATCH="4") for _ in range(3)]
        started = time.monotonic()
        while kills < KILLS_PER_SEED:
            assert time.monotonic() - started < 90, f"only {kills} kills"
            for i, proc in enumerate(lanes):
                if not wait_ready(proc):
                    pytest.fail("a worker did not start")
                time.sleep(rng.uniform(0.0, 0.35))
                stop(proc)
                kills += 1
                lanes[i] = s.worker(ESCROW_OUTBOX_BATCH="4")
        for proc in lanes:
            stop(proc)
        drain(s, PAYOUTS, REFUNDS)
        assert_exactly_once_and_books_equal_ledger(s, PAYOUTS, REFUNDS)
        print(f"\nseed {seed}: {kills} kills in {time.monotonic() - started:.1f} s")


def test_three_workers_never_deliver_an_instruction_twice(pg_db: TestDB) -> None:
    """Three worker processes on one PostgreSQL: each instruction reaches the rail in exactly one request."""
    rng = random.Random(7)
    with stack(pg_db) as s:
        s.workload(50, 50, rng)
        drain(s, 50, 50, workers=3)
        books = assert_exactly_once_and_books_equal_ledger(s, 50, 50)
    assert all(t["requests"] == 1 for t in books["bank"]["transfers"]), "a transfer was sent twice"
    assert all(r["requests"] == 1 for r in books["card"]["refunds"]), "a refund was sent twice"
