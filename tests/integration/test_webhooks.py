"""`POST /v1/webhooks/{adapter}`: verification, deduplication, disorder, and a storm of 1,000+ callbacks."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from standardwebhooks import Webhook

from escrow import bootstrap
from escrow.api.app import create_app
from escrow.audit import Actor
from escrow.money import Money
from escrow.persistence.db import transaction
from escrow.ports import ManualClock
from escrow.service.orders import NewOrder, confirm_order, record_order
from escrow.service.payout_accounts import put_payout_account
from escrow.service.refunds import refund_order
from escrow.service.screening import PassScreener
from escrow.settings import load_settings
from simulators import CallbackRequest
from tests.conftest import TestDB
from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import assert_problem
from tests.integration.test_outbox_world import (
    CARD_SETTLE_S,
    SECRET,
    SELLER_IBAN,
    SETTLE_S,
    World,
    assert_outbox_invariants,
)

WRITTEN = ("webhook_receipts", "events", "audit_records", "journal_entries")


def written(w: World) -> dict[str, int]:
    return {t: w.api.db.count(t) for t in WRITTEN}


def signed(body: bytes, webhook_id: str, at: datetime, secret: str = SECRET) -> dict[str, str]:
    text_body = body.decode()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=webhook_id, timestamp=at, data=text_body),
        "content-type": "application/json",
    }


class TestVerification:
    def test_bad_stale_missing_or_unknown_is_refused_and_writes_nothing(self, api: Api) -> None:
        """Tampered body, wrong secret, stale timestamp, missing headers: 401 problems; unknown adapter 422."""
        w = World(api, forward=False)
        w.paid_order(1, 10_000)
        w.refund(1)
        w.work()
        w.advance(CARD_SETTLE_S + 1)
        [callback] = w.recorder.requests
        before = written(w)
        now = api.clock.now()
        other = "whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA=="
        cases = [
            (callback.body.replace(b"succeeded", b"failed"), callback.headers),
            (callback.body, signed(callback.body, "msg_x", now, other)),
            (callback.body, signed(callback.body, "msg_y", datetime.fromtimestamp(now.timestamp() - 600, UTC))),
            (callback.body, {"content-type": "application/json"}),
            (callback.body, {**callback.headers, "webhook-timestamp": "soon"}),
        ]
        for body, headers in cases:
            assert_problem(api.client.post("/v1/webhooks/card", content=body, headers=headers), 401, "webhook_rejected")
        assert api.client.post("/v1/webhooks/other", content=callback.body, headers=callback.headers).status_code == 422
        assert written(w) == before
        ok = api.client.post("/v1/webhooks/card", content=callback.body, headers=callback.headers)
        assert ok.status_code == 200 and ok.json()["duplicate"] is False

    def test_signed_but_unreadable_body_is_4xx_and_writes_nothing(self, api: Api) -> None:
        """A verified callback the adapter cannot read is refused without a write, never a 500."""
        w = World(api, forward=False)
        before = written(w)
        for adapter, body in (("bank", b"<not-xml"), ("card", b'{"id": 1}'), ("bank", b"\xff\xfe")):
            headers = signed(body.decode("utf-8", "replace").encode(), "msg_z", api.clock.now())
            response = api.client.post(f"/v1/webhooks/{adapter}", content=body, headers=headers)
            assert 400 <= response.status_code < 500, response.text
        assert written(w) == before

    def test_repeated_webhook_id_is_acknowledged_and_ignored(self, api: Api) -> None:
        """Magic 93 delivers every callback twice with one webhook-id: applied once, both answered 200."""
        w = World(api)
        w.account("s-1")
        w.confirmed_order(1, 10_093)
        w.sweep()
        w.work()
        w.advance(SETTLE_S + 1)
        first, second = w.recorder.requests[:2]
        assert first.webhook_id == second.webhook_id
        assert api.db.count("webhook_receipts") == 1
        assert w.payouts()[0]["status"] == "paid"
        assert_outbox_invariants(w)


# --- the storm --------------------------------------------------------------------------------

SELLERS = 250
RETURNED = 200
CARD_REFUNDS = 250


def _setup(w: World) -> None:
    """Many payouts (most later returned) and card refunds, set up through the service functions."""
    api = w.api
    actor = Actor("system:test", "admin")
    now = api.clock.now()
    policies = api.parts.settings.policies
    screening = PassScreener().screen("x", None, None)

    def work(conn: Any) -> None:
        for i in range(SELLERS + CARD_REFUNDS):
            seller = f"s-{i}"
            order = NewOrder(f"o-{i}", f"b-{i}", seller, f"l-{i}", "Wallet", Money(10_000 + i * 100, "EUR"),
                             "card", f"pay-{i}", "EU", f"h{i}")  # fmt: skip
            record_order(conn, actor, now, order, screening, policies)
            if i < SELLERS:
                confirm_order(conn, actor, now, order.order_id)
                put_payout_account(conn, actor, now, w.rails.cipher, party_id=seller, holder_name="S",
                                   iban=SELLER_IBAN, bic=None)  # fmt: skip
            else:
                refund_order(conn, actor, now, order.order_id, None, "cancelled")

    transaction(api.parts.engine, work)


def _state(w: World) -> dict[str, Any]:
    with w.api.parts.engine.connect() as conn:
        return {
            "payouts": dict(conn.execute(text("SELECT end_to_end_id, status FROM payouts")).all()),
            "refunds": dict(conn.execute(text("SELECT id, status FROM order_refunds")).all()),
            "balances": dict(
                conn.execute(text("SELECT account, SUM(balance) FROM ledger_balances GROUP BY account")).all()
            ),
            "events": Counter(t for (t,) in conn.execute(text("SELECT type FROM events")).all()),
        }


def _pg_api(pg_db: TestDB) -> Api:
    settings = load_settings(database_url=pg_db.url, audit_seal_interval_ms=0, api_key_cache_ttl_ms=0)
    clock = ManualClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
    parts = bootstrap.components(settings, clock=clock)
    return Api(TestClient(create_app(parts), raise_server_exceptions=False), parts, clock, pg_db)


@pytest.mark.postgres_only
def test_a_storm_of_callbacks_ends_as_clean_in_order_delivery(pg_db: TestDB) -> None:
    """1,000+ callbacks, 30% duplicated, shuffled, some stale and some tampered: the same end state."""
    api = _pg_api(pg_db)
    w = World(api, forward=False, magic=False)
    _setup(w)
    assert w.sweep() == SELLERS
    w.work()
    w.advance(max(SETTLE_S, CARD_SETTLE_S) + 1)
    transfers = [t["end_to_end_id"] for t in w.books()["bank"]["transfers"]]
    for e2e in transfers[:RETURNED]:
        assert w.sim.post("/control/bank/returns", json={"end_to_end_id": e2e}).status_code == 200
    w.advance(1)
    clean: list[CallbackRequest] = list(w.recorder.requests)
    assert len(clean) == SELLERS + RETURNED + CARD_REFUNDS  # 700 distinct callbacks
    books = w.books()
    expected_payouts = {t["end_to_end_id"]: "returned" if t["returned"] else "paid" for t in books["bank"]["transfers"]}

    rng = random.Random(5)
    stream: list[tuple[CallbackRequest, bytes, dict[str, str], bool]] = []
    for c in clean:
        stream.append((c, c.body, c.headers, True))
        if rng.random() < 0.3:
            stream.append((c, c.body, c.headers, True))
    bad = rng.sample(clean, 120)
    now = api.clock.now()
    for c in bad[:60]:  # stale: correctly signed, 10 minutes old
        old = datetime.fromtimestamp(now.timestamp() - 600, UTC)
        stream.append((c, c.body, signed(c.body, c.webhook_id, old), False))
    for c in bad[60:]:  # tampered: a byte of the body changed
        body = c.body.replace(b"EUR", b"USD", 1) if b"EUR" in c.body else c.body + b" "
        stream.append((c, body, c.headers, False))
    rng.shuffle(stream)
    assert len(stream) >= 1_000 and sum(1 for s in stream if s[3]) >= len(clean) * 1.2

    started = time.monotonic()
    answers = Counter()
    for _, body, headers, good in stream:
        path = "/v1/webhooks/bank" if "webhooks/bank" in _.url else "/v1/webhooks/card"
        status = api.client.post(path, content=body, headers=headers).status_code
        assert status == (200 if good else 401), (status, good)
        answers[status] += 1
    elapsed = time.monotonic() - started

    state = _state(w)
    assert state["payouts"] == expected_payouts
    assert set(state["refunds"].values()) == {"succeeded"} and len(state["refunds"]) == CARD_REFUNDS
    assert state["events"]["payout.paid"] == SELLERS and state["events"]["payout.returned"] == RETURNED
    assert state["events"]["refund.succeeded"] == CARD_REFUNDS
    assert api.db.count("webhook_receipts") == len(clean)
    assert_outbox_invariants(w)
    print(f"\n{len(stream)} callbacks ({answers}) in {elapsed:.1f} s: {len(stream) / elapsed:.0f}/s")
    api.client.close()
    api.parts.engine.dispose()
