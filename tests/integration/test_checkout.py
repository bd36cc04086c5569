"""The checkout flow over HTTP on both databases: orders, holds, confirmation, refunds, sellers, deadlines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

from escrow.limits import AMOUNT_MINOR_MAX
from escrow.persistence.db import ItemsFailed
from escrow.service.holds import expire_due
from tests.integration.checkout_support import an_order, assert_conserved
from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import assert_problem


def post(api: Api, role: str, path: str, body: Any, **headers: str) -> Any:
    return api.client.post(path, json=body, headers={**api.key(role), **headers})


class Session:
    """Keys made once per test, so the tests read like the checkout's own calls."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.keys = {r: api.key(r) for r in ("checkout", "ip_staff", "cp_agent", "cp_supervisor", "finance", "admin")}

    def call(self, role: str, method: str, path: str, body: Any = None) -> Any:
        return self.api.client.request(method, path, json=body, headers=self.keys[role])

    def order(self, n: int | str = 1, **overrides: Any) -> dict[str, Any]:
        response = self.call("checkout", "POST", "/v1/orders", an_order(n, **overrides))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def hold(self, order_id: str, amount: int | None = None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"order_id": order_id, "reason": "suspected counterfeit", **extra}
        if amount is not None:
            body["amount"] = {"amount": amount, "currency": "EUR"}
        response = self.call("ip_staff", "POST", "/v1/holds", body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def balances(self, order_id: str) -> dict[str, int]:
        return dict(self.call("checkout", "GET", f"/v1/orders/{order_id}").json()["balances"])


@pytest.fixture
def s(api: Api) -> Session:
    return Session(api)


def _utc(moment: datetime) -> str:
    """How the API writes a timestamp: RFC 3339 in UTC, with Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class TestIntake:
    def test_new_order_is_escrowed_and_has_the_contract_shape(self, s: Session) -> None:
        """A paid order answers 201 with the DESIGN shape, its money in escrow."""
        order = s.order()
        shape = {"order_id", "buyer_id", "seller_id", "listing_id", "title", "currency", "amount", "status"}
        assert set(order) >= shape | {"jurisdiction", "balances", "screening", "holds", "created_at"}
        assert order["amount"] == {"amount": 10_000, "currency": "EUR"}
        assert order["status"] == "escrowed" and order["screening"] == {"decision": "pass", "matches": []}
        assert order["balances"] == {"escrowed": 10_000, "held": 0, "released": 0, "refunded": 0, "frozen": 0}
        assert order["created_at"].endswith("Z")
        assert_conserved(s.api)

    def test_same_order_again_is_200_and_books_nothing(self, s: Session) -> None:
        """Replaying the same order (no idempotency key) answers 200 with the same order."""
        first = s.order()
        again = s.call("checkout", "POST", "/v1/orders", an_order())
        assert again.status_code == 200 and again.json() == first
        assert s.api.db.count("journal_entries") == 1

    def test_same_order_id_other_body_is_409(self, s: Session) -> None:
        s.order()
        other = s.call("checkout", "POST", "/v1/orders", an_order(amount={"amount": 9_999, "currency": "EUR"}))
        assert_problem(other, 409, "order_conflict")
        assert s.balances("o-1")["escrowed"] == 10_000

    @pytest.mark.parametrize(
        "change",
        [
            {"amount": {"amount": 12.5, "currency": "EUR"}},
            {"amount": {"amount": 0, "currency": "EUR"}},
            {"amount": {"amount": 100, "currency": "XYZ"}},
            {"payment": {"method": "cash", "reference": "x"}},
            {"order_id": "bad id"},
            {"title": ""},
            {"jurisdiction": "eu"},
            {"unexpected": True},
        ],
    )
    def test_bad_order_is_422_and_writes_nothing(self, s: Session, change: dict[str, Any]) -> None:
        response = s.call("checkout", "POST", "/v1/orders", an_order(**change))
        assert_problem(response, 422, "validation_failed")
        assert s.api.db.count("orders") == 0 and s.api.db.count("journal_entries") == 0

    def test_only_checkout_records_orders(self, s: Session) -> None:
        assert_problem(s.call("finance", "POST", "/v1/orders", an_order()), 403, "forbidden")

    def test_unknown_order_is_404(self, s: Session) -> None:
        assert_problem(s.call("checkout", "GET", "/v1/orders/nope"), 404, "not_found")

    def test_batch_answers_each_order(self, s: Session) -> None:
        """Valid, duplicate, conflicting and invalid orders in one batch each get their own result."""
        s.order(1)
        batch = [
            an_order(2),
            an_order(1),
            an_order(1, title="changed"),
            an_order(3, amount={"amount": 1.5, "currency": "EUR"}),
            an_order(4),
        ]
        response = s.call("checkout", "POST", "/v1/orders:batch", {"orders": batch})
        assert response.status_code == 200
        results = response.json()["data"]
        assert [r["status"] for r in results] == [201, 200, 409, 422, 201]
        assert results[2]["problem"]["code"] == "order_conflict"
        assert results[3]["problem"]["code"] == "validation_failed"
        assert s.api.db.count("orders") == 3
        assert_conserved(s.api)

    def test_any_text_survives_intake_and_control_characters_are_refused(self, s: Session) -> None:
        """Titles travel to the database as JSON in a batch: quotes, backslashes, astral characters
        and escapes come back exactly; a NUL, which no database text can hold, is a 422 (not a 500)."""
        odd = 'Sac "vintage" \\ C:\\path {a,b} \u00e9\u2028\U0001f600 \\u0041 1\u6bd41'
        single = s.call("checkout", "POST", "/v1/orders", an_order(1, title=odd))
        assert single.status_code == 201 and single.json()["title"] == odd
        batch = [an_order(2, title=odd), an_order(3, title="nul \x00 inside"), an_order(4, title=odd[::-1])]
        results = s.call("checkout", "POST", "/v1/orders:batch", {"orders": batch}).json()["data"]
        assert [r["status"] for r in results] == [201, 422, 201]
        assert results[1]["problem"]["code"] == "validation_failed"
        for n, title in ((2, odd), (4, odd[::-1])):
            assert s.call("checkout", "GET", f"/v1/orders/o-{n}").json()["title"] == title
        nul = s.call("checkout", "POST", "/v1/orders", an_order(5, title="nul \x00 inside"))
        assert_problem(nul, 422, "validation_failed")
        assert s.api.db.count("orders") == 3
        assert_conserved(s.api)

    def test_batch_with_repeats_and_held_orders(self, s: Session) -> None:
        """An id twice in one batch is recorded once; orders that screening holds get their hold."""
        finding = {"kind": "keyword", "brand": "Zorblaxx", "patterns": ["zorblaxx"], "status": "confirmed"}
        assert s.call("ip_staff", "POST", "/v1/findings", finding).status_code == 201
        s.api.parts.screener.refresh_now()  # type: ignore[attr-defined]
        batch = [an_order(1), an_order(2, title="Zorblaxx replica bag"), an_order(1), an_order(3)]
        results = s.call("checkout", "POST", "/v1/orders:batch", {"orders": batch}).json()["data"]
        assert [r["status"] for r in results] == [201, 201, 200, 201]
        held = results[1]["order"]
        assert held["status"] == "held" and held["screening"]["decision"] == "hold"
        assert held["balances"]["held"] == 10_000 and len(held["holds"]) == 1
        assert results[2]["order"]["order_id"] == "o-1"
        # Answered from the values written, not read back: it must be what a read returns.
        assert s.call("checkout", "GET", "/v1/orders/o-2").json() == held
        assert s.api.db.count("orders") == 3 and s.api.db.count("holds") == 1
        feed = s.call("checkout", "GET", "/v1/events?type=order.screened").json()["data"]
        assert [e["data"]["order_id"] for e in feed] == ["o-1", "o-2", "o-3"]
        assert_conserved(s.api)

    def test_screening_holds_single_orders(self, s: Session) -> None:
        """A title matching a confirmed finding is held in full; a suspected one is held for review."""
        for status, brand in (("confirmed", "Zorblaxx"), ("suspected", "Quintaro")):
            body = {"kind": "keyword", "brand": brand, "patterns": [brand.lower()], "status": status}
            assert s.call("ip_staff", "POST", "/v1/findings", body).status_code == 201
        s.api.parts.screener.refresh_now()  # type: ignore[attr-defined]
        held = s.order(1, title="Z0RBLAXX bag 1:1")
        review = s.order(2, title="Quintaro watch")
        clean = s.order(3, title="Plain leather wallet")
        assert held["screening"]["decision"] == "hold" and held["status"] == "held"
        match = held["screening"]["matches"][0]
        assert match["matched"] == "Z0RBLAXX" and "Z0RBLAXX bag 1:1"[match["start"] : match["end"]] == match["matched"]
        assert held["holds"][0]["finding_ids"] == [match["finding_id"]]
        assert review["screening"]["decision"] == "review"
        review_deadline = review["holds"][0]["expires_at"]
        assert review_deadline < held["holds"][0]["expires_at"]  # 3-day review hold versus 90-day hold
        assert clean["screening"]["decision"] == "pass" and clean["holds"] == []
        # Held orders are answered from the values written, not read back: the answer must
        # be what a read returns (timestamps compared as the strings sent).
        for order in (held, review):
            assert s.call("checkout", "GET", f"/v1/orders/{order['order_id']}").json() == order
        assert_conserved(s.api)

    @pytest.mark.parametrize("keyed", [False, True])
    def test_batch_items_json_cannot_write_back_are_answered_not_500(self, s: Session, keyed: bool) -> None:
        """Batch items stay raw JSON until validated one by one: an integer beyond 64 bits (which
        the idempotency fingerprint must still hash), a lone surrogate in an order id (which the
        answer quotes) and one in a nested key (which pydantic's JSON mode cannot write: it made
        the keyed fingerprint a 500) are each that item's 422, and the rest of the batch is recorded."""
        huge = {**an_order(1), "amount": {"amount": 2**70, "currency": "EUR"}}
        odd_key = {**an_order(4), "amount": {"amount": 1, "currency": "EUR", "\udc00x": 2}}
        raw = json.dumps({"orders": [huge, {**an_order(2), "order_id": "o-\ud800"}, an_order(3), odd_key]})
        headers = {**s.keys["checkout"], "Content-Type": "application/json"}
        if keyed:
            headers["Idempotency-Key"] = "batch-odd-1"
        response = s.api.client.post("/v1/orders:batch", content=raw, headers=headers)
        assert response.status_code == 200, response.text
        results = response.json()["data"]
        assert [r["status"] for r in results] == [422, 422, 201, 422]
        assert results[1]["order_id"] == "o-\\ud800"  # quoted as its escape
        if keyed:
            again = s.api.client.post("/v1/orders:batch", content=raw, headers=headers)
            assert again.headers.get("idempotent-replayed") == "true" and again.json() == response.json()
        assert s.api.db.count("orders") == 1
        assert_conserved(s.api)

    @pytest.mark.parametrize("keyed", [False, True])
    def test_a_batch_item_nested_too_deep_is_refused_whole(self, s: Session, keyed: bool) -> None:
        """Raw items go whole into the idempotency fingerprint, whose serializer fails at ~260
        levels (a 500 with a key). Far past any order's shape, the batch is refused."""
        deep: Any = "x"
        for _ in range(300):
            deep = [deep]
        batch = {"orders": [an_order(1), {**an_order(2), "extra": deep}]}
        headers = {"Idempotency-Key": "batch-deep-1"} if keyed else {}
        response = s.api.client.post("/v1/orders:batch", json=batch, headers={**s.keys["checkout"], **headers})
        assert_problem(response, 422, "validation_failed")
        assert s.api.db.count("orders") == 0

    def test_batch_is_bounded(self, s: Session) -> None:
        response = s.call("checkout", "POST", "/v1/orders:batch", {"orders": [an_order(i) for i in range(1001)]})
        assert_problem(response, 422, "validation_failed")


class TestHolds:
    def test_partial_holds_never_exceed_escrow(self, s: Session) -> None:
        """Several partial holds may be placed; one more than what is escrowed is refused."""
        s.order()
        s.hold("o-1", 3_000)
        s.hold("o-1", 5_000)
        over = s.call(
            "ip_staff",
            "POST",
            "/v1/holds",
            {"order_id": "o-1", "amount": {"amount": 2_001, "currency": "EUR"}, "reason": "x"},
        )
        assert_problem(over, 409, "exceeds_escrowed_amount")
        assert s.balances("o-1") == {"escrowed": 2_000, "held": 8_000, "released": 0, "refunded": 0, "frozen": 0}
        order = s.call("checkout", "GET", "/v1/orders/o-1").json()
        assert order["status"] == "held" and len(order["holds"]) == 2
        assert_conserved(s.api)

    def test_partial_then_full_release(self, s: Session) -> None:
        s.order()
        hold = s.hold("o-1", 6_000)
        part = s.call(
            "checkout",
            "POST",
            f"/v1/holds/{hold['id']}/release",
            {"amount": {"amount": 2_500, "currency": "EUR"}, "reason": "partial"},
        )
        assert (
            part.status_code == 200 and part.json()["status"] == "active" and part.json()["amount"]["amount"] == 3_500
        )
        over = s.call(
            "checkout",
            "POST",
            f"/v1/holds/{hold['id']}/release",
            {"amount": {"amount": 3_501, "currency": "EUR"}, "reason": "x"},
        )
        assert_problem(over, 409, "exceeds_held_amount")
        # Answered from the row as written, not read back: it must be what a read returns.
        assert s.call("checkout", "GET", f"/v1/holds/{hold['id']}").json() == part.json()
        full = s.call("checkout", "POST", f"/v1/holds/{hold['id']}/release", {"reason": "cleared"})
        assert full.json()["status"] == "released" and full.json()["amount"]["amount"] == 0
        assert s.call("checkout", "GET", f"/v1/holds/{hold['id']}").json() == full.json()
        again = s.call("checkout", "POST", f"/v1/holds/{hold['id']}/release", {"reason": "again"})
        assert_problem(again, 409, "illegal_transition")
        assert s.balances("o-1")["escrowed"] == 10_000
        assert_conserved(s.api)

    def test_deadline_must_be_within_policy(self, s: Session) -> None:
        """A hold's deadline is at most hold_max_days away; extensions stay under the cap."""
        s.order()
        now = s.api.clock.now()
        too_late = (now + timedelta(days=91)).isoformat()
        response = s.call("ip_staff", "POST", "/v1/holds", {"order_id": "o-1", "reason": "x", "expires_at": too_late})
        assert_problem(response, 422, "beyond_hold_maximum")
        hold = s.hold("o-1", 1_000, expires_at=(now + timedelta(days=30)).isoformat())
        ok = s.call(
            "ip_staff",
            "POST",
            f"/v1/holds/{hold['id']}/extend",
            {"expires_at": (now + timedelta(days=200)).isoformat(), "reason": "court date"},
        )
        assert ok.status_code == 200
        beyond = s.call(
            "ip_staff",
            "POST",
            f"/v1/holds/{hold['id']}/extend",
            {"expires_at": (now + timedelta(days=271)).isoformat(), "reason": "x"},
        )
        assert_problem(beyond, 422, "beyond_hold_maximum")
        earlier = s.call(
            "ip_staff",
            "POST",
            f"/v1/holds/{hold['id']}/extend",
            {"expires_at": (now + timedelta(days=10)).isoformat(), "reason": "x"},
        )
        assert_problem(earlier, 422, "beyond_hold_maximum")
        assert_problem(
            s.call("checkout", "POST", f"/v1/holds/{hold['id']}/extend", {"expires_at": too_late, "reason": "x"}),
            403,
            "forbidden",
        )

    def test_deadlines_sent_with_an_offset_are_kept_and_published_in_utc(self, s: Session) -> None:
        """DESIGN §5: timestamps are RFC 3339 UTC. A deadline sent as +05:00 is the same
        instant everywhere it appears, the event feed and the audit trail included (the
        extension's event used to repeat the client's offset)."""
        s.order()
        plus5 = timezone(timedelta(hours=5))
        placed_at = (s.api.clock.now() + timedelta(days=30)).replace(microsecond=0)
        extended_to = placed_at + timedelta(days=60)
        hold = s.hold("o-1", 1_000, expires_at=placed_at.astimezone(plus5).isoformat())
        assert hold["expires_at"] == _utc(placed_at)
        body = {"expires_at": extended_to.astimezone(plus5).isoformat(), "reason": "court date"}
        extended = s.call("ip_staff", "POST", f"/v1/holds/{hold['id']}/extend", body)
        assert extended.status_code == 200, extended.text
        assert extended.json()["expires_at"] == _utc(extended_to)
        [event] = s.call("checkout", "GET", "/v1/events?type=hold.extended").json()["data"]
        assert event["data"]["expires_at"] == _utc(extended_to)
        with s.api.parts.engine.connect() as conn:
            data = conn.execute(text("SELECT data FROM audit_records WHERE action = 'hold.extended'")).scalar_one()
        recorded = json.loads(data) if isinstance(data, str) else data
        assert recorded == {"from": placed_at.isoformat(), "to": extended_to.isoformat()}

    def test_a_deadline_beyond_the_calendar_in_utc_is_refused(self, s: Session) -> None:
        """9999-12-31T23:00-05:00 is in the year 10000 in UTC: refused as invalid input, before
        any policy check (a finding's deadline with it was an overflow's 500, see test_findings)."""
        s.order()
        body = {"order_id": "o-1", "reason": "x", "expires_at": "9999-12-31T23:00:00-05:00"}
        response = s.call("ip_staff", "POST", "/v1/holds", body)
        assert_problem(response, 422, "validation_failed")
        assert "UTC" in response.json()["detail"]
        assert s.balances("o-1")["held"] == 0

    def test_naive_deadline_is_refused(self, s: Session) -> None:
        s.order()
        response = s.call(
            "ip_staff", "POST", "/v1/holds", {"order_id": "o-1", "reason": "x", "expires_at": "2026-12-01T00:00:00"}
        )
        assert_problem(response, 422, "validation_failed")

    def test_contest_starts_the_claim_window_and_lapses(self, s: Session) -> None:
        """A counter-notice with no claim in the window ends the hold; the worker does it once."""
        s.order()
        hold = s.hold("o-1", 4_000)
        contested = s.call(
            "checkout", "POST", f"/v1/holds/{hold['id']}/contest", {"statement": "genuine item, invoice attached"}
        )
        assert contested.json()["status"] == "contested"
        assert_problem(
            s.call("checkout", "POST", f"/v1/holds/{hold['id']}/contest", {"statement": "again"}),
            409,
            "illegal_transition",
        )
        s.api.clock.advance(timedelta(days=13))
        assert expire_due(s.api.parts.engine, s.api.clock.now()) == 0
        s.api.clock.advance(timedelta(days=2))
        assert expire_due(s.api.parts.engine, s.api.clock.now()) == 1
        assert expire_due(s.api.parts.engine, s.api.clock.now()) == 0
        assert s.call("checkout", "GET", f"/v1/holds/{hold['id']}").json()["status"] == "released"
        assert s.balances("o-1")["escrowed"] == 10_000
        assert_conserved(s.api)

    def test_a_hold_that_cannot_end_does_not_keep_the_others(self, s: Session, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each due hold ends in its own transaction; one that fails (logged, tried again next
        round) must not keep the holds after it past their deadlines. The job still fails."""
        from escrow.service import holds as hold_service

        s.order(1)
        s.order(2)
        first = s.hold("o-1", 1_000, expires_at=(s.api.clock.now() + timedelta(days=1)).isoformat())
        second = s.hold("o-2", 2_000, expires_at=(s.api.clock.now() + timedelta(days=2)).isoformat())
        s.api.clock.advance(timedelta(days=3))
        release = hold_service.release_locked

        def fails_for_the_first(conn: Any, actor: Any, now: Any, o: Any, h: Any, **kwargs: Any) -> Any:
            if h.id == first["id"]:
                raise RuntimeError("a hold the worker cannot end")
            return release(conn, actor, now, o, h, **kwargs)

        monkeypatch.setattr(hold_service, "release_locked", fails_for_the_first)
        with pytest.raises(ItemsFailed, match="expire_holds: 1 failed"):  # reported after the others
            expire_due(s.api.parts.engine, s.api.clock.now())
        assert s.call("checkout", "GET", f"/v1/holds/{second['id']}").json()["status"] == "expired"
        assert s.call("checkout", "GET", f"/v1/holds/{first['id']}").json()["status"] == "active"
        monkeypatch.undo()
        assert expire_due(s.api.parts.engine, s.api.clock.now()) == 1  # the next round ends it
        assert s.balances("o-1")["escrowed"] == 10_000 and s.balances("o-2")["escrowed"] == 10_000
        assert_conserved(s.api)

    def test_holds_expire_at_their_deadline_once(self, s: Session) -> None:
        s.order(1)
        s.order(2)
        now = s.api.clock.now()
        h1 = s.hold("o-1", 1_000, expires_at=(now + timedelta(days=1)).isoformat())
        h2 = s.hold("o-2", 2_000, expires_at=(now + timedelta(days=5)).isoformat())
        s.api.clock.advance(timedelta(days=2))
        assert expire_due(s.api.parts.engine, s.api.clock.now()) == 1
        assert s.call("checkout", "GET", f"/v1/holds/{h1['id']}").json()["status"] == "expired"
        assert s.call("checkout", "GET", f"/v1/holds/{h2['id']}").json()["status"] == "active"
        feed = s.call("checkout", "GET", "/v1/events?type=hold.expired").json()["data"]
        assert [e["data"]["hold_id"] for e in feed] == [h1["id"]]
        assert_conserved(s.api)

    def test_list_filters_and_paginates(self, s: Session) -> None:
        for n in range(5):
            s.order(n, seller_id="s-2" if n % 2 else "s-1")
            s.hold(f"o-{n}", 100)
        seen: list[str] = []
        cursor = ""
        while True:
            page = s.call("ip_staff", "GET", f"/v1/holds?limit=2&seller_id=s-1{cursor}").json()
            seen += [h["id"] for h in page["data"]]
            if not page["has_more"]:
                break
            cursor = f"&starting_after={page['data'][-1]['id']}"
        assert len(seen) == len(set(seen)) == 3
        assert s.call("ip_staff", "GET", "/v1/holds?status=active").json()["data"].__len__() == 5
        assert_problem(s.call("ip_staff", "GET", "/v1/holds?status=bogus"), 422, "validation_failed")
        assert_problem(s.call("ip_staff", "GET", "/v1/holds?limit=201"), 422, "validation_failed")
        assert_problem(s.call("ip_staff", "GET", "/v1/holds/hld_nope"), 422, "validation_failed")


class TestConfirmation:
    def test_confirm_pays_unheld_and_freezes_held(self, s: Session) -> None:
        """Unheld escrow goes to the seller's payable, held funds to frozen, still tied to the hold."""
        s.order()
        hold = s.hold("o-1", 3_000)
        confirmed = s.call("checkout", "POST", "/v1/orders/o-1/confirm")
        assert confirmed.status_code == 200
        assert confirmed.json()["balances"] == {
            "escrowed": 0,
            "held": 0,
            "released": 7_000,
            "refunded": 0,
            "frozen": 3_000,
        }
        assert confirmed.json()["status"] == "confirmed"
        seller = s.call("finance", "GET", "/v1/sellers/s-1").json()
        assert seller["balances"] == [
            {"currency": "EUR", "escrowed": 0, "held": 0, "payable": 7_000, "frozen": 3_000, "deposit": 0, "owed": 0}
        ]
        assert_problem(s.call("checkout", "POST", "/v1/orders/o-1/confirm"), 409, "illegal_transition")
        released = s.call("checkout", "POST", f"/v1/holds/{hold['id']}/release", {"reason": "no claim"})
        assert released.json()["funds"] == "frozen" and released.json()["status"] == "released"
        assert s.balances("o-1") == {"escrowed": 0, "held": 0, "released": 10_000, "refunded": 0, "frozen": 0}
        assert s.call("checkout", "GET", "/v1/orders/o-1").json()["status"] == "closed"
        assert_conserved(s.api)

    def test_no_hold_after_confirmation(self, s: Session) -> None:
        s.order()
        s.call("checkout", "POST", "/v1/orders/o-1/confirm")
        response = s.call("ip_staff", "POST", "/v1/holds", {"order_id": "o-1", "reason": "late"})
        assert_problem(response, 409, "illegal_transition")


class TestRefunds:
    def test_refund_of_unheld_escrow(self, s: Session) -> None:
        s.order()
        s.hold("o-1", 4_000)
        too_much = s.call(
            "cp_agent", "POST", "/v1/orders/o-1/refund", {"amount": {"amount": 6_001, "currency": "EUR"}, "reason": "x"}
        )
        assert_problem(too_much, 409, "exceeds_escrowed_amount")
        refunded = s.call("cp_agent", "POST", "/v1/orders/o-1/refund", {"reason": "buyer cancelled"})
        assert refunded.status_code == 200 and refunded.json()["refund"]["amount"]["amount"] == 6_000
        assert s.balances("o-1") == {"escrowed": 0, "held": 4_000, "released": 0, "refunded": 6_000, "frozen": 0}
        assert_conserved(s.api)

    def test_a_refund_in_another_currency_is_bad_input(self, s: Session) -> None:
        """As on holds and releases: the amount's currency is the client's mistake (422), not a
        conflict with the order's state (409)."""
        s.order()
        body = {"amount": {"amount": 100, "currency": "USD"}, "reason": "x"}
        problem = assert_problem(s.call("cp_agent", "POST", "/v1/orders/o-1/refund", body), 422, "invalid_input")
        assert "EUR" in problem["detail"]
        assert s.balances("o-1")["escrowed"] == 10_000 and s.api.db.count("outbox_instructions") == 0

    def test_no_ordinary_refund_after_confirmation(self, s: Session) -> None:
        s.order()
        s.call("checkout", "POST", "/v1/orders/o-1/confirm")
        assert_problem(s.call("checkout", "POST", "/v1/orders/o-1/refund", {"reason": "x"}), 409, "illegal_transition")

    def test_full_refund_marks_the_order_refunded(self, s: Session) -> None:
        s.order()
        s.call("checkout", "POST", "/v1/orders/o-1/refund", {"reason": "cancelled"})
        assert s.call("checkout", "GET", "/v1/orders/o-1").json()["status"] == "refunded"
        assert_problem(s.call("checkout", "POST", "/v1/orders/o-1/confirm"), 409, "illegal_transition")


class TestSellerFreeze:
    def test_freeze_routes_proceeds_to_frozen_and_unfreeze_releases_untied(self, s: Session) -> None:
        """Payable moves to frozen; later proceeds go there too; unfreeze frees all but what holds tie."""
        s.order(1)
        s.call("checkout", "POST", "/v1/orders/o-1/confirm")
        frozen = s.call("ip_staff", "POST", "/v1/sellers/s-1/freeze", {"reason": "repeat offender"})
        assert frozen.json()["frozen"] is True and frozen.json()["balances"][0]["frozen"] == 10_000
        s.order(2)
        hold = s.hold("o-2", 2_000)
        s.call("checkout", "POST", "/v1/orders/o-2/confirm")
        assert s.balances("o-2") == {"escrowed": 0, "held": 0, "released": 0, "refunded": 0, "frozen": 10_000}
        assert_problem(s.call("ip_staff", "POST", "/v1/sellers/s-1/unfreeze", {"reason": "x"}), 403, "forbidden")
        unfrozen = s.call("cp_supervisor", "POST", "/v1/sellers/s-1/unfreeze", {"reason": "appeal upheld"})
        assert unfrozen.status_code == 200
        balances = unfrozen.json()["balances"][0]
        assert (balances["payable"], balances["frozen"]) == (18_000, 2_000)
        assert s.balances("o-2") == {"escrowed": 0, "held": 0, "released": 8_000, "refunded": 0, "frozen": 2_000}
        s.call("checkout", "POST", f"/v1/holds/{hold['id']}/release", {"reason": "no claim"})
        assert s.call("finance", "GET", "/v1/sellers/s-1").json()["balances"][0]["payable"] == 20_000
        assert_conserved(s.api)

    def test_a_balance_above_one_amounts_bound_freezes_and_unfreezes(self, s: Session) -> None:
        """Each order is within 10^15 minor units, their sum on one seller is not: freeze and
        unfreeze move it whole, in entries of at most 10^15 (both used to answer 422
        invalid_money, so the biggest seller was the one that could not be frozen)."""
        for n in (1, 2):
            s.order(n, amount={"amount": AMOUNT_MINOR_MAX, "currency": "EUR"})
            assert s.call("checkout", "POST", f"/v1/orders/o-{n}/confirm").status_code == 200
        s.order(3, amount={"amount": 5, "currency": "EUR"})
        s.call("checkout", "POST", "/v1/orders/o-3/confirm")
        total = 2 * AMOUNT_MINOR_MAX + 5
        frozen = s.call("ip_staff", "POST", "/v1/sellers/s-1/freeze", {"reason": "repeat offender"})
        assert frozen.status_code == 200, frozen.text
        assert (frozen.json()["balances"][0]["payable"], frozen.json()["balances"][0]["frozen"]) == (0, total)
        for n in (4, 5):  # proceeds confirmed while frozen
            s.order(n, amount={"amount": AMOUNT_MINOR_MAX, "currency": "EUR"})
            s.call("checkout", "POST", f"/v1/orders/o-{n}/confirm")
        unfrozen = s.call("cp_supervisor", "POST", "/v1/sellers/s-1/unfreeze", {"reason": "appeal upheld"})
        assert unfrozen.status_code == 200, unfrozen.text
        balances = unfrozen.json()["balances"][0]
        assert (balances["payable"], balances["frozen"]) == (total + 2 * AMOUNT_MINOR_MAX, 0)
        feed = s.call("finance", "GET", "/v1/events?type=seller.frozen&type=seller.unfrozen").json()["data"]
        assert [e["data"].get("moved") or e["data"]["released"] for e in feed] == [
            [{"amount": total, "currency": "EUR"}],
            [{"amount": total + 2 * AMOUNT_MINOR_MAX, "currency": "EUR"}],
        ]
        assert_conserved(s.api)

    def test_release_while_frozen_stays_frozen(self, s: Session) -> None:
        s.order()
        hold = s.hold("o-1", 5_000)
        s.call("checkout", "POST", "/v1/orders/o-1/confirm")
        s.call("ip_staff", "POST", "/v1/sellers/s-1/freeze", {"reason": "investigation"})
        s.call("checkout", "POST", f"/v1/holds/{hold['id']}/release", {"reason": "no claim"})
        seller = s.call("finance", "GET", "/v1/sellers/s-1").json()["balances"][0]
        assert (seller["payable"], seller["frozen"]) == (0, 10_000)
        assert_problem(
            s.call("ip_staff", "POST", "/v1/sellers/s-1/freeze", {"reason": "again"}), 409, "illegal_transition"
        )
        assert_conserved(s.api)


class TestEvents:
    def test_feed_is_ordered_and_pages_without_gaps(self, s: Session) -> None:
        for n in range(4):
            s.order(n)
        hold = s.hold("o-0", 100)
        s.call("checkout", "POST", f"/v1/holds/{hold['id']}/release", {"reason": "ok"})
        types: list[str] = []
        ids: list[str] = []
        after = ""
        while True:
            page = s.call("checkout", "GET", f"/v1/events?limit=3{after}").json()
            types += [e["type"] for e in page["data"]]
            ids += [e["id"] for e in page["data"]]
            if not page["has_more"]:
                break
            after = f"&after={ids[-1]}"
        assert ids == sorted(ids) and len(ids) == len(set(ids)) == 6
        assert types == ["order.screened"] * 4 + ["hold.placed", "hold.released"]
        assert_problem(s.call("checkout", "GET", "/v1/events?after=evt_x"), 400, "invalid_cursor")
