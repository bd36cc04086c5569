"""Races on PostgreSQL: recoveries, releases, confirmations and deposits of one seller at once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from escrow.audit import SYSTEM
from escrow.ledger import Ledger
from escrow.money import Money
from escrow.persistence.db import transaction
from escrow.service.deposits import record_deposit
from escrow.service.holds import release_hold
from escrow.service.orders import confirm_order
from escrow.service.recovery import recover_outstanding, recover_seller
from tests.conftest import TestDB
from tests.integration.test_checkout_concurrency import pg_api, run_together
from tests.integration.test_refund_first import FUND, Session, assert_refund_first_sound, pay_out


def test_recoveries_racing_releases_and_confirmations_take_nothing_twice(pg_db: TestDB) -> None:
    """Twelve recoverers race the proceeds arriving; every minor unit is taken at most once."""
    api = pg_api(pg_db)
    s = Session(api)
    s.top_up(1_000_000)
    # Six receivables of 5_000 each, on orders whose proceeds were paid out already.
    refunds = []
    for n in range(6):
        s.order(n, listing_id=f"l-{n}")
        s.confirm(f"o-{n}")
    pay_out(api, "s-1", "payable", 60_000)
    for n in range(6):
        api.clock.advance(timedelta(seconds=1))  # oldest first is by creation time
        refund = s.advance(f"o-{n}", 5_000)
        assert refund["recovery"]["status"] == "outstanding"
        refunds.append(refund["id"])
    # Proceeds about to arrive: 4 unconfirmed orders (2 fully held), released/confirmed during the race.
    holds = []
    for n in range(10, 14):
        s.order(n, listing_id=f"l-{n}", amount=4_000)
        if n % 2:
            holds.append(s.hold(f"o-{n}")["id"])
    engine, policies, now = api.parts.engine, api.parts.settings.policies, api.clock.now()

    def recoverer() -> int:
        return recover_outstanding(engine, now, policies)

    def seller_recoverer() -> int:
        return len(transaction(engine, lambda conn: recover_seller(conn, SYSTEM, now, "s-1", policies)))

    def confirm(n: int) -> Any:
        return lambda: transaction(engine, lambda conn: confirm_order(conn, SYSTEM, now, f"o-{n}"))

    def release(hold_id: str) -> Any:
        return lambda: transaction(engine, lambda conn: release_hold(conn, SYSTEM, now, hold_id, None, "race"))

    def deposit() -> Any:
        return transaction(engine, lambda conn: record_deposit(
            conn, SYSTEM, now, seller_id="s-1", amount=Money(3_000, "EUR"), reference="DEP", reason=None,
            policies=policies))  # fmt: skip

    jobs = [recoverer, seller_recoverer] * 6 + [confirm(n) for n in range(10, 14)] + [release(h) for h in holds]
    jobs.append(deposit)
    results = run_together(*jobs)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors
    recover_outstanding(engine, now, policies)  # whatever arrived after the last recoverer looked
    # 16_000 of proceeds and a 3_000 deposit arrived: 19_000 of the 30_000 owed is recovered, exactly once.
    with engine.connect() as conn:
        recovered = conn.execute(text("SELECT SUM(amount) FROM advance_recoveries WHERE NOT undone")).scalar_one()
        rows = conn.execute(text("SELECT recovered, amount FROM advance_refunds")).all()
        ledger = Ledger(conn)
        assert int(recovered) == 19_000 == sum(r.recovered for r in rows)
        assert ledger.balance("seller:s-1:owed", "EUR") == -11_000
        assert ledger.balance("seller:s-1:payable", "EUR") == 0 and ledger.balance("seller:s-1:deposit", "EUR") == 0
        assert ledger.balance(FUND, "EUR") == 1_000_000 - 30_000 + 19_000
    # Oldest receivables first: the first three are paid in full, the fourth in part.
    statuses = [s.get(r)["recovery"]["status"] for r in refunds]
    assert statuses == ["recovered"] * 3 + ["outstanding"] * 3
    assert_refund_first_sound(api)


def test_concurrent_on_demand_recoveries_of_one_refund(pg_db: TestDB) -> None:
    """Ten POST /recover at once on one refund with money available: it is recovered once."""
    api = pg_api(pg_db)
    s = Session(api)
    s.top_up(100_000)
    s.order(1)
    s.confirm("o-1")
    pay_out(api, "s-1", "payable", 10_000)
    refund = s.advance("o-1", 7_000)
    s.order(2, listing_id="l-2")
    s.confirm("o-2")  # 10_000 payable; nobody recovered yet (no worker ran)
    responses = run_together(*[lambda: s.call("finance", "POST", f"/v1/refunds/{refund['id']}/recover")] * 10)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert sum(len(r.json()["recovered_now"]) for r in responses) == 1
    assert s.get(refund["id"])["recovery"]["status"] == "recovered"
    assert Ledger.__name__ and s.api.db.count("advance_recoveries") == 1
    assert_refund_first_sound(api)


def test_concurrent_refunds_never_exceed_what_the_buyer_paid(pg_db: TestDB) -> None:
    """Ten advance and ordinary refunds of one order at once: together they never pass the amount paid."""
    api = pg_api(pg_db)
    s = Session(api)
    s.top_up(1_000_000)
    s.order(1, amount=10_000)
    agent, checkout = api.key("cp_agent"), api.key("checkout")

    def advance() -> int:
        body = {"order_id": "o-1", "amount": {"amount": 3_000, "currency": "EUR"}, "reason": "race"}
        return int(api.client.post("/v1/refunds", json=body, headers=agent).status_code)

    def ordinary() -> int:
        body = {"amount": {"amount": 3_000, "currency": "EUR"}, "reason": "race"}
        return int(api.client.post("/v1/orders/o-1/refund", json=body, headers=checkout).status_code)

    statuses = run_together(*([advance] * 5 + [ordinary] * 5))
    assert all(not isinstance(x, BaseException) for x in statuses), statuses
    assert set(statuses) <= {200, 201, 409}, statuses
    assert sum(1 for x in statuses if x in (200, 201)) == 3  # 3 x 3_000 fit in 10_000, a fourth does not
    with api.parts.engine.connect() as conn:
        advanced = conn.execute(text("SELECT COALESCE(SUM(amount), 0) FROM advance_refunds")).scalar_one()
        ordinary_total = conn.execute(text("SELECT COALESCE(SUM(amount), 0) FROM order_refunds")).scalar_one()
    assert advanced + ordinary_total == 9_000
    assert_refund_first_sound(api)
    api.client.close()
    api.parts.engine.dispose()
