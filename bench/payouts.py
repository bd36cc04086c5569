"""Outbox throughput: instructions delivered per second by 1 and by 3 `escrow worker` processes.

Real sockets throughout: the simulator (bank + card acquirer) and the service under uvicorn,
PostgreSQL on 127.0.0.1:5432 (or ESCROW_TEST_POSTGRES_URL), workers as subprocesses. The
workload is N payouts (sellers with confirmed orders and payout accounts; the workers' sweep
creates the payouts) and N card refunds, recorded over HTTP before the clock starts.

    .venv/bin/python bench/payouts.py [--n 150]

Prints, per worker count: time until every instruction reached its rail (none pending) and
until every outcome was recorded (paid / succeeded), and the instructions per second.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import psycopg
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from escrow.persistence import migrate
from escrow.persistence.db import make_engine
from tests.conftest import DEFAULT_PG, PostgresServer, TestDB
from tests.e2e.test_outbox_processes import assert_exactly_once_and_books_equal_ledger, stack, stop

WAIT_S = 300.0


def run(server: PostgresServer, workers: int, n: int) -> tuple[float, float]:
    url = server.create_database("escrow_bench")
    engine = make_engine(url)
    try:
        migrate.upgrade(url)
        db = TestDB("postgres", url, engine, lambda: None)
        with stack(db) as s:
            s.workload(n, n, random.Random(workers))
            procs = [s.worker(ESCROW_OUTBOX_BATCH="20") for _ in range(workers)]
            started = time.monotonic()
            delivered_s = 0.0
            try:
                while True:
                    elapsed = time.monotonic() - started
                    if elapsed > WAIT_S:
                        raise SystemExit("the outbox did not finish")
                    with engine.connect() as conn:
                        created = conn.execute(text("SELECT COUNT(*) FROM payouts")).scalar_one()
                        pending = conn.execute(
                            text("SELECT COUNT(*) FROM outbox_instructions WHERE state = 'pending'")
                        ).scalar_one()
                    if not delivered_s and created == n and pending == 0:
                        delivered_s = elapsed
                    if s.finished(n, n):
                        completed_s = elapsed
                        break
                    time.sleep(0.02)
            finally:
                for p in procs:
                    stop(p)
            assert_exactly_once_and_books_equal_ledger(s, n, n)
        return delivered_s, completed_s
    finally:
        engine.dispose()
        server.drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=150, help="payouts, and as many refunds")
    args = parser.parse_args()
    server = PostgresServer(os.environ.get("ESCROW_TEST_POSTGRES_URL") or DEFAULT_PG)
    psycopg.connect(server.admin_url, connect_timeout=3).close()
    total = 2 * args.n
    rates = {}
    for workers in (1, 3):
        delivered_s, completed_s = run(server, workers, args.n)
        rates[workers] = total / delivered_s
        print(
            f"{workers} worker(s): {total} instructions delivered in {delivered_s:.2f} s"
            f" ({rates[workers]:.0f}/s); all outcomes recorded after {completed_s:.2f} s"
        )
    print(f"3 workers / 1 worker: {rates[3] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
