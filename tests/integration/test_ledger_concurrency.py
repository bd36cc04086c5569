"""Real concurrency on PostgreSQL: guards hold and balances stay exact under contention."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import UTC, datetime

from escrow.errors import InsufficientFunds
from escrow.ledger import Entry, Ledger, Posting, transfer
from escrow.money import Money
from escrow.persistence.db import transaction
from tests.conftest import TestDB
from tests.integration.test_ledger import assert_books_sound

NOW = datetime(2026, 11, 29, tzinfo=UTC)
THREADS = 16
TRANSFERS = 3_200
GUARDED = [f"seller:s{i}:payable" for i in range(12)]


def test_concurrent_random_transfers_never_break_a_guard(pg_db: TestDB) -> None:
    """16 threads, 3,200 transfers among 12 guarded accounts and a hot one: nothing negative, nothing drifts."""
    with pg_db.engine.begin() as conn:
        ledger = Ledger(conn)
        for account in GUARDED:
            ledger.post(transfer("fund", "clearing:bank", account, Money(5_000, "EUR")), now=NOW)

    outcomes: Counter[str] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(TRANSFERS // THREADS):
            # Few accounts and amounts near the balances: many transfers contend and many are refused.
            source, destination = rng.sample(GUARDED[:6] if rng.random() < 0.7 else GUARDED, 2)
            amount = Money(rng.randint(1, 2_500), "EUR")
            if rng.random() < 0.2:
                # Three legs, one of them the shared platform account.
                entry = Entry(
                    "fee",
                    (
                        Posting(source, -amount),
                        Posting(destination, Money(amount.amount_minor - 1, "EUR")),
                        Posting("clearing:bank", Money(1, "EUR")),
                    )
                    if amount.amount_minor > 1
                    else (Posting(source, -amount), Posting(destination, amount)),
                )
            else:
                entry = transfer("move", source, destination, amount)
            try:
                transaction(pg_db.engine, lambda conn, e=entry: Ledger(conn).post(e, now=NOW))
                outcome = "posted"
            except InsufficientFunds:
                outcome = "refused"
            except BaseException as exc:  # recorded and failed below, with the thread's error
                with lock:
                    errors.append(exc)
                return
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sum(outcomes.values()) == TRANSFERS
    assert outcomes["posted"] > TRANSFERS // 4 and outcomes["refused"] > 0, outcomes
    assert_books_sound(pg_db)
    with pg_db.engine.connect() as conn:
        ledger = Ledger(conn)
        total = sum(ledger.balance(a, "EUR") for a in GUARDED) + ledger.balance("clearing:bank", "EUR")
        assert total == 0
        assert all(ledger.balance(a, "EUR") >= 0 for a in GUARDED)
