"""Ledger throughput: the ledger layer against the same SQL issued raw, SQLite and PostgreSQL.

Each transfer is one transaction of the hold shape: insert an entry, insert two postings,
upsert two balance rows (guarded); on PostgreSQL the three are sent as one statement, on
both sides, as the ledger sends them there. Workloads:

  spread      order:{i}:escrow -> order:{i}:held over many orders (no shared row)
  hot         clearing:card -> order:{i}:escrow: every transfer touches one platform account,
              which the ledger spreads over HOT_ACCOUNT_SHARDS balance rows
  hot-1row    (raw SQL only) the same with the platform account on ONE row: what an
              unsharded design would do

Prints transfers/s for 1, 4 and 16 concurrent clients (the two sides take turns within a
cell, best of ROUNDS), the ledger/raw ratio (target >= 0.7) and hot/spread at 16 clients
(target >= 0.8).

    .venv/bin/python bench/ledger.py [--transfers 4000] [--pg postgresql://postgres@127.0.0.1:5432/test] [--no-sqlite]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from escrow.ids import new_id
from escrow.ledger import Ledger, transfer
from escrow.ledger.store import pg_post_sql
from escrow.limits import HOT_ACCOUNT_SHARDS
from escrow.money import Money
from escrow.persistence import migrate
from escrow.persistence.db import make_engine

ORDERS = 2_000
CLIENTS = (1, 4, 16)
ROUNDS = 5
NOW = datetime(2026, 11, 29, tzinfo=UTC)
FUNDING = 10**12


def accounts_for(workload: str, i: int) -> tuple[str, str]:
    if workload == "spread":
        return f"order:o{i}:escrow", f"order:o{i}:held"
    return "clearing:card", f"order:o{i}:escrow"


def run_clients(clients: int, transfers: int, one: Callable[[random.Random, int], None]) -> float:
    """Run `transfers` calls of `one` spread over `clients` threads; returns transfers/s."""
    per_client = transfers // clients
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        try:
            for n in range(per_client):
                one(rng, seed * 1_000_000 + n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return per_client * clients / elapsed


class LayerClient:
    """Transfers through `Ledger.post`, each in its own SQLAlchemy transaction.

    Like the raw client, each client thread keeps one connection (as a worker or a request
    thread does); what is measured is the layer: validation, ids, SQLAlchemy's transaction
    handling and the ledger's statements.
    """

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url, pool_size=20)
        self.local = threading.local()

    def conn(self) -> Connection:
        conn: Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self.engine.connect()
        return conn

    def fund(self) -> None:
        with self.engine.begin() as conn:
            ledger = Ledger(conn)
            for i in range(ORDERS):
                ledger.post(transfer("fund", "clearing:bank", f"order:o{i}:escrow", Money(FUNDING, "EUR")), now=NOW)

    def one(self, workload: str) -> Callable[[random.Random, int], None]:
        def post(rng: random.Random, _n: int) -> None:
            source, destination = accounts_for(workload, rng.randrange(ORDERS))
            # Built, validated and prepared before the transaction opens, as the raw client
            # prepares its rows before BEGIN: nothing but I/O should run under a write lock.
            conn = self.conn()
            ledger = Ledger(conn)
            prepared = ledger.prepare(transfer("hold", source, destination, Money(1, "EUR")), now=NOW)
            with conn.begin():
                ledger.post(prepared)

        return post


class RawClient:
    """The same statements through the bare driver: no validation, no pool, no SQLAlchemy."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.local = threading.local()
        m = "?" if self.sqlite else "%s"
        g5 = f"({m}, {m}, {m}, {m}, {m})"
        self.sql_entry = (
            "INSERT INTO journal_entries (id, kind, created_at, reverses_id, request_id, memo)"
            f" VALUES ({m}, {m}, {m}, NULL, NULL, NULL)"
        )
        self.sql_postings = f"INSERT INTO postings (entry_id, account, currency, amount, created_at) VALUES {g5}, {g5}"
        self.sql_balances = (
            f"INSERT INTO ledger_balances (account, currency, shard, balance, non_negative) VALUES {g5}, {g5}"
            " ON CONFLICT (account, currency, shard) DO UPDATE SET balance = ledger_balances.balance + excluded.balance"
            " WHERE NOT ledger_balances.non_negative OR ledger_balances.balance + excluded.balance >= 0"
            " RETURNING account"
        )
        # PostgreSQL: the three statements sent as one, in the ledger's own text (two legs,
        # two balance rows), as the ledger sends them there.
        self.sql_one = pg_post_sql(2, 2)
        self.ts: object = NOW.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else NOW

    def conn(self) -> object:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            if self.sqlite:
                conn = sqlite3.connect(
                    self.url.split("///", 1)[1], isolation_level=None, check_same_thread=False, timeout=30
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("PRAGMA foreign_keys=ON")  # as the service's connections
            else:
                conn = psycopg.connect(self.url.replace("postgresql+psycopg://", "postgresql://"))
            self.local.conn = conn
        return conn

    def one(self, workload: str) -> Callable[[random.Random, int], None]:
        single_row = workload == "hot-1row"
        base = "hot" if single_row else workload

        def post(rng: random.Random, _n: int) -> None:
            source, destination = accounts_for(base, rng.randrange(ORDERS))
            # The service's own ids: a separate id range (say a counter) would append at the
            # right edge of the index while the layer's ids land inside it, and the benchmark
            # would measure B-tree page splits instead of the layer.
            entry_id = new_id("ent")
            guarded_source = source.startswith("order:")
            shard = 0 if (guarded_source or single_row) else rng.randrange(HOT_ACCOUNT_SHARDS)
            rows = sorted([(source, "EUR", shard, -1, False), (destination, "EUR", 0, 1, True)])
            conn = self.conn()
            cur = conn.cursor()  # type: ignore[attr-defined]
            legs = (entry_id, source, "EUR", -1, self.ts, entry_id, destination, "EUR", 1, self.ts)
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE")
                cur.execute(self.sql_entry, (entry_id, "hold", self.ts))
                cur.execute(self.sql_postings, legs)
                cur.execute(self.sql_balances, [v for row in rows for v in row])
            else:
                cur.execute(
                    self.sql_one,
                    [entry_id, "hold", self.ts, None, None, None, *legs, *(v for row in rows for v in row)],
                )
            if len(cur.fetchall()) != 2:
                raise RuntimeError("guard refused a funded transfer")
            conn.commit() if not self.sqlite else cur.execute("COMMIT")  # type: ignore[attr-defined]
            cur.close()

        return post


def measure(clients: int, transfers: int, sides: dict[str, Callable[[random.Random, int], None]]) -> dict[str, float]:
    """Each side's best of ROUNDS runs after a warm-up, the sides taking turns.

    Taking turns matters: the tables grow and WAL checkpoints come and go during a cell, so
    running one side's rounds before the other's would hand the drift to one of them. Five
    rounds rather than three: on a shared virtual machine a stall of a few hundred ms can
    spoil a whole sub-second run, and three rounds sometimes left one side none clean.
    """
    for one in sides.values():
        run_clients(clients, max(clients * 50, transfers // 8), one)
    best = dict.fromkeys(sides, 0.0)
    for _ in range(ROUNDS):
        for side, one in sides.items():
            best[side] = max(best[side], run_clients(clients, transfers, one))
    return best


def bench_database(label: str, url: str, transfers: int) -> dict[tuple[str, str, int], float]:
    migrate.upgrade(url)
    layer = LayerClient(url)
    layer.fund()
    raw = RawClient(url)
    results: dict[tuple[str, str, int], float] = {}
    for workload in ("spread", "hot", "hot-1row"):
        for clients in CLIENTS:
            sides = {"raw": raw.one(workload)}
            if workload != "hot-1row":
                sides["ledger"] = layer.one(workload)
            for side, rate in measure(clients, transfers, sides).items():
                results[(side, workload, clients)] = rate
            print(
                f"  {label:<10} {workload:<9} {clients:>2} clients   "
                + (
                    f"ledger {results[('ledger', workload, clients)]:>7.0f}/s   "
                    if workload != "hot-1row"
                    else " " * 23
                )
                + f"raw {results[('raw', workload, clients)]:>7.0f}/s",
                flush=True,
            )
    return results


def report(label: str, r: dict[tuple[str, str, int], float]) -> None:
    print(f"\n{label}: transfers/s and ratios")
    print(f"  {'workload':<9} {'clients':>7} {'ledger':>9} {'raw SQL':>9} {'ledger/raw':>11}")
    for workload in ("spread", "hot"):
        for c in CLIENTS:
            lr, rr = r[("ledger", workload, c)], r[("raw", workload, c)]
            print(f"  {workload:<9} {c:>7} {lr:>9.0f} {rr:>9.0f} {lr / rr:>11.2f}")
    for c in CLIENTS:
        print(f"  {'hot-1row':<9} {c:>7} {'':>9} {r[('raw', 'hot-1row', c)]:>9.0f}")
    top = max(CLIENTS)
    print(
        f"  hot/spread at {top} clients: ledger {r[('ledger', 'hot', top)] / r[('ledger', 'spread', top)]:.2f}"
        f"   raw sharded {r[('raw', 'hot', top)] / r[('raw', 'spread', top)]:.2f}"
        f"   raw one row {r[('raw', 'hot-1row', top)] / r[('raw', 'spread', top)]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transfers", type=int, default=4_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()

    all_results = {}
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            print("SQLite (file, WAL)")
            all_results["SQLite"] = bench_database("sqlite", f"sqlite:///{tmp}/bench.db", args.transfers)
    if not args.no_pg:
        name = f"escrow_bench_{random.randrange(10**6)}"
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = args.pg.rsplit("/", 1)[0] + "/" + name
        try:
            print("PostgreSQL")
            all_results["PostgreSQL"] = bench_database("postgres", url, args.transfers)
        finally:
            with psycopg.connect(args.pg, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    for label, r in all_results.items():
        report(label, r)


if __name__ == "__main__":
    main()
