"""Refund-first over HTTP on both databases: advance refunds, approval, recovery, deposits, failures."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from escrow import audit
from escrow.audit import Actor
from escrow.ledger import Ledger, transfer
from escrow.limits import AMOUNT_MINOR_MAX
from escrow.money import Money
from escrow.outbox import Outcome
from escrow.persistence.db import transaction
from escrow.service import advance_refunds
from escrow.service.holds import expire_due
from escrow.service.recovery import RECOVERABLE_ADVANCES, Rotation, recover_outstanding
from tests.integration.checkout_support import an_order
from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import assert_problem
from tests.integration.test_ledger import assert_books_sound

FUND = "platform:guarantee_fund"
ROLES = ("checkout", "ip_staff", "cp_agent", "cp_supervisor", "finance", "admin")


def balance(api: Api, account: str, currency: str = "EUR") -> int:
    with api.parts.engine.connect() as conn:
        return Ledger(conn).balance(account, currency)


def _sum(conn: Any, sql: str, **params: Any) -> int:
    return int(conn.execute(text(sql), params).scalar_one() or 0)


def assert_refund_first_sound(api: Api) -> None:
    """The books balance, guarded accounts are not negative, every order is conserved, and the
    guarantee fund, what sellers owe and the sellers' liabilities reconcile with the refund rows.
    No buyer is ever refunded more than they paid."""
    assert_books_sound(api.db)
    with api.parts.engine.connect() as conn:
        ledger = Ledger(conn)
        per_seller: dict[tuple[str, str], int] = defaultdict(int)
        for o in conn.execute(text("SELECT * FROM orders")).mappings().all():
            oid, cur = o["order_id"], o["currency"]
            assert o["escrowed"] + o["held"] + o["frozen"] + o["released"] + o["refunded"] == o["amount"], o
            assert ledger.balance(f"order:{oid}:escrow", cur) == o["escrowed"], o
            assert ledger.balance(f"order:{oid}:held", cur) == o["held"], o
            live = _sum(conn, "SELECT SUM(amount) FROM holds WHERE order_id = :o AND status IN ('active', 'contested')",
                        o=oid)  # fmt: skip
            assert live == o["held"] if o["confirmed_at"] is None else live <= o["frozen"], o
            per_seller[(o["seller_id"], cur)] += o["frozen"] + o["released"]
            # The buyer: ordinary refunds standing + advance refunds paid <= what was paid. (Pending ones are
            # counted when a refund is requested or approved; ordinary refunds do not count them yet.)
            into_refunded = _sum(conn, "SELECT SUM(amount) FROM advance_recoveries WHERE order_id = :o"
                                 " AND source = 'order_held' AND NOT undone", o=oid)  # fmt: skip
            advanced = _sum(conn, "SELECT SUM(amount) FROM advance_refunds WHERE order_id = :o"
                            " AND status IN ('submitted', 'succeeded')", o=oid)  # fmt: skip
            assert o["refunded"] - into_refunded >= 0, o
            assert o["refunded"] - into_refunded + advanced <= o["amount"], (o, advanced)
        # Sellers: order parts = payable + frozen + what recovery took from them directly.
        taken = defaultdict(int)
        for seller, cur, amount in conn.execute(
            text("SELECT seller_id, currency, SUM(amount) FROM advance_recoveries"
                 " WHERE NOT undone AND source IN ('frozen', 'payable') GROUP BY seller_id, currency")
        ).all():  # fmt: skip
            taken[(seller, cur)] = int(amount)
        for (seller, cur), expected in per_seller.items():
            have = ledger.balance(f"seller:{seller}:payable", cur) + ledger.balance(f"seller:{seller}:frozen", cur)
            paid_out = -_sum(conn, "SELECT SUM(p.amount) FROM postings p JOIN journal_entries e ON e.id = p.entry_id"
                             " WHERE e.kind LIKE 'payout%' AND p.account IN (:a, :b) AND p.currency = :c",
                             a=f"seller:{seller}:payable", b=f"seller:{seller}:frozen", c=cur)  # fmt: skip
            assert have + taken[(seller, cur)] + paid_out == expected, (seller, cur)
            tied = _sum(conn, "SELECT SUM(amount) FROM holds WHERE seller_id = :s AND currency = :c AND confirmed"
                        " AND status IN ('active', 'contested')", s=seller, c=cur)  # fmt: skip
            assert tied <= ledger.balance(f"seller:{seller}:frozen", cur), (seller, cur)
        # Receivables: each refund's row agrees with its recovery rows, each seller's owed with its refunds.
        refunds = conn.execute(text("SELECT * FROM advance_refunds")).mappings().all()
        owed: dict[tuple[str, str], int] = defaultdict(int)
        active: dict[str, int] = defaultdict(int)
        for r in refunds:
            standing = _sum(conn, "SELECT SUM(amount) FROM advance_recoveries WHERE refund_id = :r AND NOT undone",
                            r=r["id"])  # fmt: skip
            assert standing == r["recovered"], r
            if r["recovery_status"] in ("outstanding", "recovered", "written_off"):
                assert r["status"] in ("submitted", "succeeded"), r
                out = r["amount"] - r["recovered"] - r["written_off"]
                assert (out > 0) == (r["recovery_status"] == "outstanding"), r
                owed[(r["seller_id"], r["currency"])] += out
                active[r["currency"]] += r["amount"]
            else:
                assert r["recovered"] == 0 and r["written_off"] == 0, r
                assert r["status"] in ("pending_approval", "rejected", "failed"), r
        sellers = {s for s, _ in per_seller} | {r["seller_id"] for r in refunds}
        currencies = {c for _, c in per_seller} | {r["currency"] for r in refunds}
        for cur in currencies:
            total_owed = 0
            for seller in sellers:
                assert ledger.balance(f"seller:{seller}:owed", cur) == -owed[(seller, cur)], (seller, cur)
                total_owed += owed[(seller, cur)]
            assert ledger.balance(RECOVERABLE_ADVANCES, cur) == total_owed, cur
            # The fund: top-ups + confiscations - advances paid + what recovery (other than confiscation) brought.
            topped = _sum(conn, "SELECT SUM(p.amount) FROM postings p JOIN journal_entries e ON e.id = p.entry_id"
                          " WHERE e.kind = 'guarantee_fund_topped_up' AND p.account = :f AND p.currency = :c",
                          f=FUND, c=cur)  # fmt: skip
            confiscated = _sum(conn, "SELECT SUM(p.amount) FROM postings p JOIN journal_entries e ON e.id = p.entry_id"
                               " WHERE e.kind = 'deposit_confiscated' AND p.account = :f AND p.currency = :c",
                               f=FUND, c=cur)  # fmt: skip
            recovered = _sum(conn, "SELECT SUM(amount) FROM advance_recoveries WHERE NOT undone AND currency = :c"
                             " AND source <> 'confiscation'", c=cur)  # fmt: skip
            assert ledger.balance(FUND, cur) == topped + confiscated - active[cur] + recovered, cur
            in_flight = _sum(conn, "SELECT SUM(amount) FROM advance_refunds WHERE status = 'submitted'"
                             " AND currency = :c", c=cur) + _sum(
                conn, "SELECT SUM(amount) FROM order_refunds WHERE status = 'submitted' AND currency = :c", c=cur
            )  # fmt: skip
            assert ledger.balance("in_transit:refunds", cur) == in_flight, cur


class Session:
    """Keys made once per test; helpers read like the staff's own calls."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.keys = {r: api.key(r) for r in ROLES}
        self.keys["cp_supervisor_2"] = api.key("cp_supervisor", name="second supervisor")

    def call(self, role: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
        return self.api.client.request(method, path, json=body, headers={**self.keys[role], **headers})

    def order(self, n: int | str = 1, amount: int = 10_000, **overrides: Any) -> dict[str, Any]:
        body = an_order(n, amount={"amount": amount, "currency": overrides.pop("currency", "EUR")}, **overrides)
        response = self.call("checkout", "POST", "/v1/orders", body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def hold(self, order_id: str, amount: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"order_id": order_id, "reason": "suspected counterfeit"}
        if amount is not None:
            body["amount"] = {"amount": amount, "currency": "EUR"}
        response = self.call("ip_staff", "POST", "/v1/holds", body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def confirm(self, order_id: str) -> None:
        assert self.call("checkout", "POST", f"/v1/orders/{order_id}/confirm").status_code == 200

    def top_up(self, amount: int = 1_000_000, currency: str = "EUR") -> None:
        body = {"amount": {"amount": amount, "currency": currency}, "reference": "TOPUP-1"}
        response = self.call("finance", "POST", "/v1/guarantee-fund/top-ups", body)
        assert response.status_code == 201, response.text

    def refund(self, order_id: str, amount: int, role: str = "cp_agent", currency: str = "EUR") -> Any:
        body = {"order_id": order_id, "amount": {"amount": amount, "currency": currency}, "reason": "buyer protection"}
        return self.call(role, "POST", "/v1/refunds", body)

    def advance(self, order_id: str, amount: int) -> dict[str, Any]:
        response = self.refund(order_id, amount)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def get(self, refund_id: str) -> dict[str, Any]:
        response = self.call("cp_agent", "GET", f"/v1/refunds/{refund_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def order_view(self, order_id: str) -> dict[str, Any]:
        return dict(self.call("checkout", "GET", f"/v1/orders/{order_id}").json())

    def deposit(self, seller: str, amount: int) -> dict[str, Any]:
        body = {"amount": {"amount": amount, "currency": "EUR"}, "reference": f"DEP-{amount}"}
        response = self.call("finance", "POST", f"/v1/sellers/{seller}/deposit", body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def outcome(self, refund_id: str, kind: str, reason: str | None = None) -> bool:
        """What the worker does with a rail outcome for the refund's current instruction."""
        now = self.api.clock.now()

        def work(conn: Any) -> bool:
            r, frozen = advance_refunds.lock_for_outcome(conn, refund_id, now)
            return advance_refunds.apply_outcome(conn, r, frozen, Outcome(kind, reason), now, key=r.instruction_key)  # type: ignore[arg-type]

        return transaction(self.api.parts.engine, work)

    def fail(self, refund_id: str, reason: str = "card expired") -> dict[str, Any]:
        now = self.api.clock.now()
        actor = Actor("staff-test", "finance")
        return transaction(
            self.api.parts.engine, lambda conn: advance_refunds.fail_refund(conn, actor, now, refund_id, reason)
        )


@pytest.fixture
def s(api: Api) -> Session:
    return Session(api)


def pay_out(api: Api, seller: str, source: str, amount: int) -> None:
    """What a payout does to the books (escrow.service.payouts): the proceeds leave the seller."""
    with api.parts.engine.begin() as conn:
        entry = transfer("payout_submitted", f"seller:{seller}:{source}", "in_transit:payouts", Money(amount, "EUR"))
        Ledger(conn).post(entry, now=api.clock.now())


def events_of(api: Api, type_: str) -> list[dict[str, Any]]:
    with api.parts.engine.connect() as conn:
        rows = conn.execute(text("SELECT data FROM events WHERE type = :t ORDER BY seq"), {"t": type_}).all()
    return [as_json(r[0]) for r in rows]


def as_json(value: Any) -> Any:
    """A JSON column read with raw SQL: parsed by PostgreSQL's driver, a string from SQLite."""
    return json.loads(value) if isinstance(value, str) else value


class TestAdvanceRefund:
    def test_below_threshold_is_paid_from_the_fund_and_opens_a_receivable(self, s: Session) -> None:
        """At or below the threshold: submitted at once, fund -> in transit, seller owes the same amount."""
        s.top_up(100_000)
        s.order(1)
        refund = s.advance("o-1", 3_000)
        assert refund["id"].startswith("ref_") and refund["status"] == "submitted"
        assert refund["approval"]["required"] is False and refund["attempt"] == 1
        assert refund["destination"] == {"rail": "card", "payment_reference": "pay-1"}
        # The order's own escrow repays the fund at once (the buyer's money, which the buyer had back).
        assert refund["recovery"]["status"] == "recovered"
        assert refund["recovery"]["recovered"][0]["source"] == "order_held"
        assert refund["recovery"]["recovered"][0]["amount"] == {"amount": 3_000, "currency": "EUR"}
        assert balance(s.api, FUND) == 100_000
        assert balance(s.api, "in_transit:refunds") == 3_000
        assert s.order_view("o-1")["balances"] == {
            "escrowed": 7_000, "held": 0, "released": 0, "refunded": 3_000, "frozen": 0,
        }  # fmt: skip
        with s.api.parts.engine.connect() as conn:
            ins = conn.execute(text("SELECT * FROM outbox_instructions")).mappings().one()
        assert ins["key"] == refund["id"] and ins["kind"] == "refund" and ins["rail"] == "card"
        assert as_json(ins["destination"]) == {"payment_reference": "pay-1"} and ins["amount"] == 3_000
        assert [e["refund_id"] for e in events_of(s.api, "refund.submitted")] == [refund["id"]]
        assert_refund_first_sound(s.api)

    def test_confirmed_order_receivable_stays_outstanding_until_money_arrives(self, s: Session) -> None:
        """After confirmation the proceeds went payable and were paid out: the seller owes the refund."""
        s.top_up(100_000)
        s.order(1)
        s.confirm("o-1")
        s.call("ip_staff", "POST", "/v1/sellers/s-1/freeze", {"reason": "investigation"})
        s.call("cp_supervisor", "POST", "/v1/sellers/s-1/unfreeze", {"reason": "done"})
        # Recovery takes payable proceeds (the recovery order: order_held, frozen, payable, deposit).
        refund = s.advance("o-1", 4_000)
        assert refund["recovery"]["status"] == "recovered"
        assert [r["source"] for r in refund["recovery"]["recovered"]] == ["payable"]
        assert balance(s.api, "seller:s-1:payable") == 6_000 and balance(s.api, "seller:s-1:owed") == 0
        assert_refund_first_sound(s.api)

    def test_without_money_in_the_fund_it_is_refused_and_nothing_is_written(self, s: Session) -> None:
        """The guarantee fund is guarded: an empty fund answers 409 and leaves no trace."""
        s.order(1)
        before = s.api.db.counts()
        body = s.refund("o-1", 1_000)
        problem = assert_problem(body, 409, "guarantee_fund_insufficient")
        assert problem["accounts"] == [FUND]
        assert s.api.db.counts() == before
        assert s.api.db.count("advance_refunds") == 0 and s.api.db.count("outbox_instructions") == 0

    def test_above_threshold_waits_for_a_second_supervisor(self, s: Session) -> None:
        """Four eyes: the requesting supervisor cannot approve; another one can, and then it is paid."""
        s.top_up(1_000_000)
        s.order(1, amount=80_000)
        pending = s.refund("o-1", 60_000, role="cp_supervisor").json()
        assert pending["status"] == "pending_approval" and pending["approval"]["required"] is True
        assert pending["recovery"]["status"] == "none" and balance(s.api, FUND) == 1_000_000
        same = s.call("cp_supervisor", "POST", f"/v1/refunds/{pending['id']}/approve")
        assert_problem(same, 403, "four_eyes_required")
        assert_problem(s.call("cp_agent", "POST", f"/v1/refunds/{pending['id']}/approve"), 403, "forbidden")
        approved = s.call("cp_supervisor_2", "POST", f"/v1/refunds/{pending['id']}/approve", {"reason": "ok"})
        assert approved.status_code == 200, approved.text
        body = approved.json()
        assert body["status"] == "submitted" and body["approval"]["decision_reason"] == "ok"
        assert body["approval"]["decided_by"] != body["approval"]["requested_by"]
        again = s.call("cp_supervisor_2", "POST", f"/v1/refunds/{pending['id']}/approve")
        assert_problem(again, 409, "illegal_transition")
        assert_refund_first_sound(s.api)

    def test_the_threshold_bounds_what_goes_unreviewed_on_an_order_in_total(self, s: Session) -> None:
        """Against a 50,000 threshold, 40,000 then 30,000 on one order: the second needs a
        supervisor (both went unreviewed: splitting bypassed four eyes). What awaits or had an
        approval does not count; another order starts afresh."""
        s.top_up(1_000_000)
        s.order(1, amount=80_000)
        s.order(2, amount=80_000)
        first = s.refund("o-1", 40_000).json()
        assert first["status"] == "submitted" and first["approval"]["required"] is False
        second = s.refund("o-1", 30_000).json()
        assert second["status"] == "pending_approval" and second["approval"]["required"] is True
        third = s.refund("o-1", 10_000).json()  # 40,000 + 10,000 is the threshold itself
        assert third["status"] == "submitted" and third["approval"]["required"] is False
        other = s.refund("o-2", 50_000).json()
        assert other["status"] == "submitted"
        assert s.order_view("o-1")["balances"]["refunded"] == 50_000  # the pending 30,000 not paid
        assert s.order_view("o-2")["balances"]["refunded"] == 50_000
        assert_refund_first_sound(s.api)

    def test_rejected_refund_pays_nothing_and_frees_the_room(self, s: Session) -> None:
        """A rejection ends the request; its amount no longer counts against the order."""
        s.top_up(1_000_000)
        s.order(1, amount=80_000)
        pending = s.advance("o-1", 70_000)
        assert_problem(s.refund("o-1", 20_000), 409, "exceeds_refundable_amount")
        assert_problem(s.call("cp_agent", "POST", f"/v1/refunds/{pending['id']}/reject", {"reason": "no"}), 403,
                       "forbidden")  # fmt: skip
        rejected = s.call("cp_supervisor", "POST", f"/v1/refunds/{pending['id']}/reject", {"reason": "not credible"})
        assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
        assert balance(s.api, FUND) == 1_000_000 and s.api.db.count("outbox_instructions") == 0
        assert s.refund("o-1", 20_000).status_code == 201
        assert_refund_first_sound(s.api)

    def test_no_threshold_for_the_currency_means_approval(self, s: Session) -> None:
        """A currency without a configured threshold always needs a second pair of eyes."""
        s.top_up(1_000_000, currency="SEK")
        s.order(1, amount=500, currency="SEK")
        assert s.refund("o-1", 1, currency="SEK").json()["status"] == "pending_approval"

    def test_refunds_never_exceed_what_the_buyer_paid(self, s: Session) -> None:
        """Ordinary, advance and pending refunds together are capped by the order amount."""
        s.top_up(1_000_000)
        s.order(1, amount=10_000)
        assert s.call("checkout", "POST", "/v1/orders/o-1/refund",
                      {"amount": {"amount": 4_000, "currency": "EUR"}, "reason": "r"}).status_code == 200  # fmt: skip
        s.advance("o-1", 5_000)
        assert_problem(s.refund("o-1", 1_001), 409, "exceeds_refundable_amount")
        s.advance("o-1", 1_000)
        assert_problem(s.refund("o-1", 1), 409, "exceeds_refundable_amount")
        assert s.order_view("o-1")["balances"]["refunded"] == 10_000
        assert_refund_first_sound(s.api)

    def test_a_pending_advance_refund_keeps_its_room_until_approved(self, s: Session) -> None:
        """The room a pending advance refund reserved cannot be taken by an ordinary refund; approval then pays."""
        s.top_up(1_000_000)
        s.order(1, amount=80_000)
        pending = s.advance("o-1", 60_000)
        ordinary = {"amount": {"amount": 30_000, "currency": "EUR"}, "reason": "r"}
        assert_problem(s.call("checkout", "POST", "/v1/orders/o-1/refund", ordinary), 409, "exceeds_refundable_amount")
        approved = s.call("cp_supervisor", "POST", f"/v1/refunds/{pending['id']}/approve")
        assert approved.status_code == 200 and approved.json()["status"] == "submitted"
        assert s.order_view("o-1")["balances"]["refunded"] <= 80_000
        assert_refund_first_sound(s.api)

    def test_ordinary_refund_counts_pending_advance_refunds(self, s: Session) -> None:
        """An ordinary refund must not use the room a pending advance refund reserved."""
        s.top_up(1_000_000)
        s.order(1, amount=80_000)
        s.advance("o-1", 60_000)
        ordinary = {"amount": {"amount": 30_000, "currency": "EUR"}, "reason": "r"}
        assert_problem(s.call("checkout", "POST", "/v1/orders/o-1/refund", ordinary), 409,
                       "exceeds_refundable_amount")  # fmt: skip

    @pytest.mark.parametrize(
        ("body", "status", "code"),
        [
            ({"order_id": "o-1", "amount": {"amount": 10.5, "currency": "EUR"}, "reason": "x"}, 422,
             "validation_failed"),
            ({"order_id": "o-1", "amount": {"amount": -5, "currency": "EUR"}, "reason": "x"}, 422, "validation_failed"),
            ({"order_id": "o-1", "amount": {"amount": 5, "currency": "EUR"}}, 422, "validation_failed"),
            ({"order_id": "o-1", "amount": {"amount": 5, "currency": "EUR"}, "reason": "x", "x": 1}, 422,
             "validation_failed"),
            ({"order_id": "o-1", "amount": {"amount": 5, "currency": "USD"}, "reason": "x"}, 422, "currency_mismatch"),
            ({"order_id": "o-9", "amount": {"amount": 5, "currency": "EUR"}, "reason": "x"}, 404, "not_found"),
            ({"order_id": "o-1", "amount": {"amount": 10_001, "currency": "EUR"}, "reason": "x"}, 409,
             "exceeds_refundable_amount"),
        ],
    )  # fmt: skip
    def test_bad_requests_are_problems_and_write_nothing(
        self, s: Session, body: dict[str, Any], status: int, code: str
    ) -> None:
        """Malformed, mismatched or excessive requests answer 4xx problem+json; nothing changes."""
        s.top_up()
        s.order(1)
        before = s.api.db.counts()
        assert_problem(s.call("cp_agent", "POST", "/v1/refunds", body), status, code)
        assert s.api.db.counts() == before and s.api.db.count("advance_refunds") == 0

    def test_roles_and_unknown_ids(self, s: Session) -> None:
        """Checkout cannot advance refunds; unknown and malformed refund ids are 404 / 422."""
        s.top_up()
        s.order(1)
        assert_problem(s.refund("o-1", 100, role="checkout"), 403, "forbidden")
        assert_problem(s.call("cp_agent", "GET", "/v1/refunds/ref_00000000000000000000000000"), 404, "not_found")
        assert_problem(s.call("cp_agent", "GET", "/v1/refunds/nope"), 422, "validation_failed")
        assert_problem(s.call("finance", "POST", "/v1/guarantee-fund/top-ups",
                              {"amount": {"amount": 0, "currency": "EUR"}, "reference": "x"}), 422,
                       "validation_failed")  # fmt: skip

    def test_idempotent_replay_pays_once(self, s: Session) -> None:
        """The same Idempotency-Key replays the first answer; the fund pays once."""
        s.top_up(100_000)
        s.order(1)
        s.confirm("o-1")
        body = {"order_id": "o-1", "amount": {"amount": 1_000, "currency": "EUR"}, "reason": "x"}
        first = s.call("cp_agent", "POST", "/v1/refunds", body, **{"Idempotency-Key": "k1"})
        again = s.call("cp_agent", "POST", "/v1/refunds", body, **{"Idempotency-Key": "k1"})
        assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == first.json()
        assert s.api.db.count("advance_refunds") == 1

    def test_listing_and_the_fund_view(self, s: Session) -> None:
        s.top_up(50_000)
        s.order(1)
        s.order(2)
        a = s.advance("o-1", 100)
        b = s.advance("o-2", 200)
        first, second = sorted([a["id"], b["id"]])
        page = s.call("finance", "GET", "/v1/refunds?limit=1").json()
        assert [r["id"] for r in page["data"]] == [first] and page["has_more"] is True
        rest = s.call("finance", "GET", f"/v1/refunds?starting_after={first}").json()
        assert [r["id"] for r in rest["data"]] == [second] and rest["has_more"] is False
        mine = s.call("finance", "GET", "/v1/refunds?order_id=o-2&status=submitted").json()
        assert [r["id"] for r in mine["data"]] == [b["id"]]
        fund = s.call("finance", "GET", "/v1/guarantee-fund").json()
        assert fund["currencies"] == [{"currency": "EUR", "balance": 50_000, "advanced_outstanding": 0}]


class TestRecovery:
    def test_held_order_before_confirmation_repays_from_its_hold(self, s: Session) -> None:
        """The held part of an unconfirmed order is taken first; the hold is applied."""
        s.top_up(100_000)
        s.order(1)
        hold = s.hold("o-1", 6_000)
        refund = s.advance("o-1", 8_000)
        assert refund["recovery"]["status"] == "recovered"
        taken = [(r["source"], r["amount"]["amount"]) for r in refund["recovery"]["recovered"]]
        assert taken == [("order_held", 6_000), ("order_held", 2_000)]
        h = s.call("ip_staff", "GET", f"/v1/holds/{hold['id']}").json()
        assert h["status"] == "applied" and h["amount"]["amount"] == 0
        assert s.order_view("o-1")["balances"] == {
            "escrowed": 2_000, "held": 0, "released": 0, "refunded": 8_000, "frozen": 0,
        }  # fmt: skip
        assert events_of(s.api, "hold.applied")[0]["refund_id"] == refund["id"]
        assert_refund_first_sound(s.api)

    def test_confirmed_held_order_repays_in_the_recovery_order(self, s: Session) -> None:
        """After confirmation: the order's tied frozen funds, then payable, then the deposit; other holds untouched."""
        s.top_up(100_000)
        s.order(1)
        s.hold("o-1", 3_000)
        s.confirm("o-1")  # 3_000 frozen (tied to o-1's hold), 7_000 payable
        s.order(2, listing_id="l-2")
        s.hold("o-2")
        s.confirm("o-2")  # 10_000 frozen but tied to o-2's hold: o-2's buyer and claims come first
        pay_out(s.api, "s-1", "payable", 5_000)
        s.deposit("s-1", 50_000)
        refund = s.advance("o-1", 10_000)
        taken = [(r["source"], r["amount"]["amount"]) for r in refund["recovery"]["recovered"]]
        assert taken == [("order_held", 3_000), ("payable", 2_000), ("deposit", 5_000)]
        assert refund["recovery"]["status"] == "recovered"
        assert refund["recovery"]["outstanding"] == {"amount": 0, "currency": "EUR"}
        again = s.call("finance", "POST", f"/v1/refunds/{refund['id']}/recover").json()
        assert again["recovered_now"] == [] and len(again["recovery"]["recovered"]) == 3
        assert balance(s.api, "seller:s-1:deposit") == 45_000 and balance(s.api, "seller:s-1:frozen") == 10_000
        assert balance(s.api, "seller:s-1:owed") == 0 and balance(s.api, FUND) == 100_000
        assert s.order_view("o-1")["balances"] == {
            "escrowed": 0, "held": 0, "released": 7_000, "refunded": 3_000, "frozen": 0,
        }  # fmt: skip
        assert_refund_first_sound(s.api)

    def test_worker_job_recovers_when_proceeds_arrive_and_takes_nothing_twice(self, s: Session) -> None:
        """A seller with nothing left owes the refund; the next proceeds repay it, in one worker round only."""
        s.top_up(100_000)
        s.order(1, seller_id="s-2")
        s.confirm("o-1")
        pay_out(s.api, "s-2", "payable", 10_000)
        refund = s.advance("o-1", 6_000)
        assert refund["recovery"]["status"] == "outstanding" and refund["recovery"]["recovered"] == []
        assert balance(s.api, "seller:s-2:owed") == -6_000
        s.order(2, seller_id="s-2", listing_id="l-2")
        s.hold("o-2", 7_000)
        s.confirm("o-2")  # 3_000 payable, 7_000 frozen but tied to o-2's hold
        policies = s.api.parts.settings.policies
        assert recover_outstanding(s.api.parts.engine, s.api.clock.now(), policies) == 1
        part = s.get(refund["id"])
        assert part["recovery"]["outstanding"]["amount"] == 3_000
        assert [(x["source"], x["amount"]["amount"]) for x in part["recovery"]["recovered"]] == [("payable", 3_000)]
        assert recover_outstanding(s.api.parts.engine, s.api.clock.now(), policies) == 0
        hold = s.call("ip_staff", "GET", "/v1/holds?order_id=o-2").json()["data"][0]
        s.call("ip_staff", "POST", f"/v1/holds/{hold['id']}/release", {"reason": "not infringing"})
        assert recover_outstanding(s.api.parts.engine, s.api.clock.now(), policies) == 1
        done = s.get(refund["id"])
        assert done["recovery"]["status"] == "recovered" and done["recovery"]["outstanding"]["amount"] == 0
        assert balance(s.api, "seller:s-2:payable") == 4_000 and balance(s.api, FUND) == 100_000
        completed = events_of(s.api, "recovery.completed")
        assert [e["refund_id"] for e in completed] == [refund["id"]]
        assert_refund_first_sound(s.api)

    def test_the_worker_goes_round_the_sellers_instead_of_starting_over(self, s: Session) -> None:
        """A round visits at most `batch` sellers. s-a's money is all tied by a hold, so it
        takes nothing; rounds that always began at the first id never reached s-b, whose
        receivable stayed outstanding (and whose proceeds the sweep never paid out)."""
        s.top_up(100_000)
        s.order(1, seller_id="s-a")
        s.confirm("o-1")
        pay_out(s.api, "s-a", "payable", 10_000)
        s.advance("o-1", 5_000)
        s.order(2, seller_id="s-a", listing_id="l-2")
        s.hold("o-2")
        s.confirm("o-2")  # s-a's only money: frozen, tied by o-2's hold
        s.order(3, seller_id="s-b", listing_id="l-3")
        s.confirm("o-3")
        pay_out(s.api, "s-b", "payable", 10_000)
        b_refund = s.advance("o-3", 3_000)
        assert b_refund["recovery"]["status"] == "outstanding"
        s.order(4, seller_id="s-b", listing_id="l-4")
        s.confirm("o-4")  # 10,000 payable arrives for s-b
        rotation = Rotation()
        for _ in range(3):
            recover_outstanding(s.api.parts.engine, s.api.clock.now(), s.api.parts.settings.policies, batch=1,
                                rotation=rotation)  # fmt: skip
        assert s.get(b_refund["id"])["recovery"]["status"] == "recovered"
        assert balance(s.api, FUND) == 100_000 - 5_000
        assert_refund_first_sound(s.api)

    def test_untied_frozen_proceeds_come_before_payable(self, s: Session) -> None:
        """Proceeds frozen by a seller freeze (no hold on them) are taken before payable ones."""
        s.top_up(100_000)
        s.order(1, seller_id="s-3")
        s.confirm("o-1")
        s.call("ip_staff", "POST", "/v1/sellers/s-3/freeze", {"reason": "x"})
        owed = s.advance("o-1", 4_000)
        assert [x["source"] for x in owed["recovery"]["recovered"]] == ["frozen"]
        assert balance(s.api, "seller:s-3:frozen") == 6_000
        assert_refund_first_sound(s.api)

    def test_write_off_leaves_the_loss_with_the_fund(self, s: Session) -> None:
        """Finance writes off what cannot be recovered; the receivable closes as written_off."""
        s.top_up(100_000)
        s.order(1, seller_id="s-9")
        s.confirm("o-1")
        pay_out(s.api, "s-9", "payable", 10_000)  # the proceeds left before the refund
        refund = s.advance("o-1", 6_000)
        assert refund["recovery"]["status"] == "outstanding"
        assert refund["recovery"]["outstanding"]["amount"] == 6_000
        assert balance(s.api, "seller:s-9:owed") == -6_000 and balance(s.api, RECOVERABLE_ADVANCES) == 6_000
        assert_problem(s.call("cp_agent", "POST", f"/v1/refunds/{refund['id']}/write-off", {"reason": "x"}), 403,
                       "forbidden")  # fmt: skip
        too_much = {"amount": {"amount": 6_001, "currency": "EUR"}, "reason": "x"}
        assert_problem(s.call("finance", "POST", f"/v1/refunds/{refund['id']}/write-off", too_much), 422,
                       "invalid_input")  # fmt: skip
        part = {"amount": {"amount": 1_000, "currency": "EUR"}, "reason": "partial"}
        assert s.call("finance", "POST", f"/v1/refunds/{refund['id']}/write-off", part).json()["recovery"][
            "status"] == "outstanding"  # fmt: skip
        s.deposit("s-9", 2_000)  # recovered from the deposit at once
        after = s.get(refund["id"])
        assert after["recovery"]["outstanding"]["amount"] == 3_000
        done = s.call("finance", "POST", f"/v1/refunds/{refund['id']}/write-off", {"reason": "uncollectable"}).json()
        assert done["recovery"]["status"] == "written_off" and done["recovery"]["written_off"]["amount"] == 4_000
        assert balance(s.api, "seller:s-9:owed") == 0 and balance(s.api, FUND) == 100_000 - 6_000 + 2_000
        assert_problem(s.call("finance", "POST", f"/v1/refunds/{refund['id']}/write-off", {"reason": "x"}), 409,
                       "illegal_transition")  # fmt: skip
        assert_refund_first_sound(s.api)


class TestDeposits:
    def test_confiscation_pays_what_is_owed_then_the_fund(self, s: Session) -> None:
        """Confiscated deposit money clears the receivables oldest first; the rest goes to the fund."""
        s.top_up(100_000)
        s.order(1, seller_id="s-9")
        s.confirm("o-1")
        pay_out(s.api, "s-9", "payable", 10_000)
        first = s.advance("o-1", 3_000)
        s.api.clock.advance(timedelta(seconds=1))  # oldest first is by creation time
        second = s.advance("o-1", 2_000)
        assert balance(s.api, "seller:s-9:owed") == -5_000
        # Booked straight to the ledger: POST .../deposit would recover from it at once.
        with s.api.parts.engine.begin() as conn:
            Ledger(conn).post(transfer("seller_deposit", "clearing:bank", "seller:s-9:deposit", Money(8_000, "EUR")),
                              now=s.api.clock.now())  # fmt: skip
        body = {"amount": {"amount": 4_000, "currency": "EUR"}, "reason": "counterfeits", "finding_ids": ["fnd_1"]}
        assert_problem(s.call("cp_agent", "POST", "/v1/sellers/s-9/deposit/confiscate", body), 403, "forbidden")
        done = s.call("ip_staff", "POST", "/v1/sellers/s-9/deposit/confiscate", body)
        assert done.status_code == 200, done.text
        c = done.json()["confiscated"][0]
        assert c["to_recovery"]["amount"] == 4_000 and c["to_guarantee_fund"]["amount"] == 0
        assert s.get(first["id"])["recovery"]["status"] == "recovered"
        assert s.get(second["id"])["recovery"]["outstanding"]["amount"] == 1_000
        rest = s.call("finance", "POST", "/v1/sellers/s-9/deposit/confiscate",
                      {"reason": "all of it", "finding_ids": ["fnd_1"]}).json()["confiscated"][0]  # fmt: skip
        assert rest["to_recovery"]["amount"] == 1_000 and rest["to_guarantee_fund"]["amount"] == 3_000
        assert rest["deposit_left"]["amount"] == 0
        assert balance(s.api, FUND) == 100_000 - 5_000 + 8_000 and balance(s.api, "seller:s-9:owed") == 0
        assert_problem(s.call("finance", "POST", "/v1/sellers/s-9/deposit/confiscate",
                              {"reason": "x", "finding_ids": ["fnd_1"]}), 409, "exceeds_deposit")  # fmt: skip
        assert_refund_first_sound(s.api)

    def test_a_deposit_above_one_amounts_bound_is_confiscated_whole(self, s: Session) -> None:
        """Deposits of 10^15 each (one amount's bound) sum to more: confiscating all of it
        posts each leg in pieces, clears what is owed first and gives the rest to the fund
        (it answered 422 invalid_money)."""
        s.top_up(100_000)
        s.order(1, seller_id="s-9")
        s.confirm("o-1")
        pay_out(s.api, "s-9", "payable", 10_000)
        owed = s.advance("o-1", 3_000)
        with s.api.parts.engine.begin() as conn:
            for _ in range(2):
                Ledger(conn).post(transfer("seller_deposit", "clearing:bank", "seller:s-9:deposit",
                                           Money(AMOUNT_MINOR_MAX, "EUR")), now=s.api.clock.now())  # fmt: skip
        body = {"reason": "all of it", "finding_ids": ["fnd_1"]}
        done = s.call("ip_staff", "POST", "/v1/sellers/s-9/deposit/confiscate", body)
        assert done.status_code == 200, done.text
        [c] = done.json()["confiscated"]
        assert c["amount"]["amount"] == 2 * AMOUNT_MINOR_MAX and c["deposit_left"]["amount"] == 0
        assert (c["to_recovery"]["amount"], c["to_guarantee_fund"]["amount"]) == (3_000, 2 * AMOUNT_MINOR_MAX - 3_000)
        assert s.get(owed["id"])["recovery"]["status"] == "recovered"
        assert balance(s.api, "seller:s-9:owed") == 0
        assert balance(s.api, FUND) == 100_000 - 3_000 + 2 * AMOUNT_MINOR_MAX  # the advance out, the deposit in
        assert_refund_first_sound(s.api)

    def test_bad_confiscations_write_nothing(self, s: Session) -> None:
        """More than the deposit, no findings, or a float amount: 4xx and no entry."""
        s.deposit("s-1", 1_000)
        before = s.api.db.counts()
        for body, status, code in [
            ({"amount": {"amount": 1_001, "currency": "EUR"}, "reason": "x", "finding_ids": ["f"]}, 409,
             "exceeds_deposit"),
            ({"amount": {"amount": 1, "currency": "USD"}, "reason": "x", "finding_ids": ["f"]}, 409, "exceeds_deposit"),
            ({"reason": "x", "finding_ids": []}, 422, "validation_failed"),
            ({"amount": {"amount": 1.0, "currency": "EUR"}, "reason": "x", "finding_ids": ["f"]}, 422,
             "validation_failed"),
        ]:  # fmt: skip
            assert_problem(s.call("finance", "POST", "/v1/sellers/s-1/deposit/confiscate", body), status, code)
        assert s.api.db.counts() == before

    def test_seller_view_shows_deposit_owed_and_points(self, s: Session) -> None:
        s.deposit("s-1", 1_000)
        view = s.call("finance", "GET", "/v1/sellers/s-1").json()
        assert view["balances"][0]["deposit"] == 1_000 and view["balances"][0]["owed"] == 0
        assert view["points"] == {"year": 2026, "points_per_year": 12, "points_left": 12, "strikes": 0,
                                  "freeze_at_strikes": 4}  # fmt: skip


class TestFailure:
    def test_failed_refund_is_reversed_and_recoveries_go_back(self, s: Session) -> None:
        """A failure reverses the submission: the fund is whole, the receivable cancelled, the order restored."""
        s.top_up(100_000)
        s.order(1)
        s.hold("o-1", 2_000)
        refund = s.advance("o-1", 5_000)
        assert s.order_view("o-1")["balances"]["refunded"] == 5_000
        failed = s.fail(refund["id"], "card expired")
        assert failed["status"] == "failed" and failed["failure_reason"] == "card expired"
        assert failed["recovery"]["status"] == "cancelled" and failed["recovery"]["recovered"] == []
        assert balance(s.api, FUND) == 100_000 and balance(s.api, "in_transit:refunds") == 0
        # Recovered money goes back to what it was: the intercepted 2,000 is held again under a
        # restored hold (a failed refund must not free intercepted money), the rest to escrow.
        order = s.order_view("o-1")
        assert order["balances"] == {"escrowed": 8_000, "held": 2_000, "released": 0, "refunded": 0, "frozen": 0}
        live = [h for h in order["holds"] if h["status"] == "active"]
        assert [h["amount"]["amount"] for h in live] == [2_000] and live[0]["reason"].startswith("restored")
        with s.api.parts.engine.connect() as conn:
            reversing = conn.execute(
                text("SELECT reverses_id FROM journal_entries WHERE kind = 'advance_refund_failed'")
            ).scalar_one()
            ins = conn.execute(text("SELECT state, rail_state FROM outbox_instructions")).one()
        assert reversing is not None and ins.state == "done" and ins.rail_state == "failed"
        assert events_of(s.api, "refund.failed")[0]["refund_id"] == refund["id"]
        assert_problem(s.call("cp_agent", "POST", f"/v1/refunds/{refund['id']}/retry",
                              {"destination": {"rail": "bank", "party_id": "b-1"}}), 403, "forbidden")  # fmt: skip
        retried = s.call("finance", "POST", f"/v1/refunds/{refund['id']}/retry",
                         {"destination": {"rail": "bank", "party_id": "b-1"}, "reason": "buyer gave IBAN"})  # fmt: skip
        assert retried.status_code == 200, retried.text
        body = retried.json()
        assert body["status"] == "submitted" and body["attempt"] == 2 and body["recovery"]["status"] == "recovered"
        with s.api.parts.engine.connect() as conn:
            keys = conn.execute(text("SELECT key, rail, destination FROM outbox_instructions ORDER BY created_at,"
                                     " id")).all()  # fmt: skip
        assert {k.key for k in keys} == {refund["id"], f"{refund['id']}-2"}
        assert any(k.rail == "bank" and "b-1" in str(k.destination) for k in keys)
        assert_refund_first_sound(s.api)

    def test_failure_after_confirmation_gives_back_what_was_taken(self, s: Session) -> None:
        """Payable proceeds return to payable; intercepted (held) proceeds stay frozen under a restored hold."""
        s.top_up(100_000)
        s.order(1)
        s.hold("o-1", 4_000)
        s.confirm("o-1")
        refund = s.advance("o-1", 5_000)  # 4_000 from the order's frozen funds, 1_000 from payable
        assert balance(s.api, "seller:s-1:payable") == 5_000
        s.fail(refund["id"])
        assert balance(s.api, "seller:s-1:payable") == 6_000 and balance(s.api, "seller:s-1:frozen") == 4_000
        order = s.order_view("o-1")
        assert (order["balances"]["released"], order["balances"]["frozen"]) == (6_000, 4_000)
        assert [h["amount"]["amount"] for h in order["holds"] if h["status"] == "active"] == [4_000]
        assert_refund_first_sound(s.api)

    def test_a_restored_hold_keeps_the_counter_notice_and_its_claim_window(self, s: Session) -> None:
        """Part of a contested hold pays an advance refund that then fails: the part held again
        is contested too, and ends with the claim window like the rest (it was held, active,
        for the whole 90 days)."""
        s.top_up(100_000)
        s.order(1)
        hold = s.hold("o-1")
        assert (
            s.call("checkout", "POST", f"/v1/holds/{hold['id']}/contest", {"statement": "genuine"}).status_code == 200
        )
        refund = s.advance("o-1", 4_000)
        assert s.outcome(refund["id"], "failed", "do_not_honor") is True
        restored = [h for h in s.order_view("o-1")["holds"] if h["reason"].startswith("restored")]
        assert [(h["status"], h["amount"]["amount"]) for h in restored] == [("contested", 4_000)]
        s.api.clock.advance(timedelta(days=15))  # the 14-day claim window lapses with no claim
        expire_due(s.api.parts.engine, s.api.clock.now())
        order = s.order_view("o-1")
        assert [h for h in order["holds"] if h["status"] in ("active", "contested")] == []
        assert order["balances"]["escrowed"] == 10_000 and order["balances"]["held"] == 0
        assert_refund_first_sound(s.api)

    @pytest.mark.parametrize("fails_on_day", [95, 300])
    def test_money_is_not_held_again_past_the_holds_deadline(self, s: Session, fails_on_day: int) -> None:
        """A hold runs to day 90 (EU; its cap is day 270) and is applied whole to an advance
        refund on day 85; the refund fails later. The hold would have ended by then, so the
        money goes where its end sent it (escrow), not under a new hold to the next day, past
        the deadline or even the jurisdiction's cap, as it did."""
        s.top_up(100_000)
        s.order(1)
        s.hold("o-1")
        s.api.clock.advance(timedelta(days=85))
        refund = s.advance("o-1", 10_000)
        s.api.clock.advance(timedelta(days=fails_on_day - 85))
        assert s.outcome(refund["id"], "failed", "do_not_honor") is True
        order = s.order_view("o-1")
        assert [h for h in order["holds"] if h["status"] in ("active", "contested")] == []
        assert order["balances"] == {"escrowed": 10_000, "held": 0, "released": 0, "refunded": 0, "frozen": 0}
        assert_refund_first_sound(s.api)

    def test_a_restored_hold_ends_when_its_hold_would(self, s: Session) -> None:
        """Failing before the deadline, the money is held again to the hold's own deadline and
        cap, not a day after the failure."""
        s.top_up(100_000)
        s.order(1)
        hold = s.hold("o-1")
        refund = s.advance("o-1", 10_000)
        s.api.clock.advance(timedelta(days=10))
        assert s.outcome(refund["id"], "failed", "do_not_honor") is True
        [restored] = [h for h in s.order_view("o-1")["holds"] if h["status"] == "active"]
        assert restored["expires_at"] == hold["expires_at"]
        with s.api.parts.engine.connect() as conn:
            caps = conn.execute(text("SELECT DISTINCT max_expires_at FROM holds WHERE order_id = 'o-1'")).all()
        assert len(caps) == 1
        assert_refund_first_sound(s.api)

    def test_money_staff_released_is_not_held_again(self, s: Session) -> None:
        """IP staff released the rest of the hold as not infringing; the advance refund that had
        taken part of it then fails: the part comes back released like the rest, not under a
        new active hold."""
        s.top_up(100_000)
        s.order(1)
        hold = s.hold("o-1")
        refund = s.advance("o-1", 4_000)
        released = s.call("ip_staff", "POST", f"/v1/holds/{hold['id']}/release", {"reason": "not infringing"})
        assert released.status_code == 200 and released.json()["status"] == "released"
        assert s.outcome(refund["id"], "failed", "do_not_honor") is True
        order = s.order_view("o-1")
        assert [h for h in order["holds"] if h["status"] in ("active", "contested")] == []
        assert order["balances"] == {"escrowed": 10_000, "held": 0, "released": 0, "refunded": 0, "frozen": 0}
        assert_refund_first_sound(s.api)

    def test_a_frozen_recovery_goes_back_to_payable_once_the_seller_is_unfrozen(self, s: Session) -> None:
        """Recovered from a frozen seller's untied proceeds; the seller is unfrozen; the refund
        fails. The money goes back to payable: it went back to frozen, where no unfreeze (the
        seller is not frozen) and no payout could ever reach it."""
        s.top_up(100_000)
        s.order(1, seller_id="s-3")
        s.confirm("o-1")
        assert s.call("ip_staff", "POST", "/v1/sellers/s-3/freeze", {"reason": "x"}).status_code == 200
        refund = s.advance("o-1", 4_000)
        assert [x["source"] for x in refund["recovery"]["recovered"]] == ["frozen"]
        assert s.call("cp_supervisor", "POST", "/v1/sellers/s-3/unfreeze", {"reason": "cleared"}).status_code == 200
        assert s.outcome(refund["id"], "failed", "do_not_honor") is True
        assert (balance(s.api, "seller:s-3:frozen"), balance(s.api, "seller:s-3:payable")) == (0, 10_000)
        assert_refund_first_sound(s.api)

    def test_rail_outcomes(self, s: Session) -> None:
        """Success books to clearing; duplicates and late declines change nothing; a return reverses."""
        s.top_up(100_000)
        s.order(1, payment={"method": "bank_transfer", "reference": "pay-1"})
        s.confirm("o-1")
        refund = s.advance("o-1", 1_000)
        assert refund["destination"] == {"rail": "bank", "party_id": "b-1"}
        assert s.outcome(refund["id"], "accepted") is False
        assert s.outcome(refund["id"], "booked") is True
        assert s.outcome(refund["id"], "booked") is False
        assert s.outcome(refund["id"], "rejected") is False
        assert s.get(refund["id"])["status"] == "succeeded"
        assert balance(s.api, "in_transit:refunds") == 0
        assert balance(s.api, "clearing:bank") == -10_000 - 100_000 + 1_000  # paid, topped up, refunded
        assert_refund_first_sound(s.api)
        assert s.outcome(refund["id"], "returned", "AC04") is True
        back = s.get(refund["id"])
        assert back["status"] == "failed" and back["failure_reason"] == "returned: AC04"
        assert balance(s.api, "seller:s-1:payable") == 10_000 and balance(s.api, FUND) == 100_000
        assert_problem(s.call("cp_agent", "POST", f"/v1/refunds/{refund['id']}/approve"), 403, "forbidden")
        assert_refund_first_sound(s.api)

    def test_card_decline_and_an_old_attempts_news(self, s: Session) -> None:
        """A decline fails the refund; after a retry, news about the first attempt changes nothing."""
        s.top_up(100_000)
        s.order(1)
        s.confirm("o-1")
        refund = s.advance("o-1", 1_000)
        assert s.outcome(refund["id"], "failed", "do_not_honor") is True
        s.call("finance", "POST", f"/v1/refunds/{refund['id']}/retry",
               {"destination": {"rail": "card", "payment_reference": "pay-other"}})  # fmt: skip
        now = s.api.clock.now()

        def old_news(conn: Any) -> bool:
            r, frozen = advance_refunds.lock_for_outcome(conn, refund["id"], now)
            return advance_refunds.apply_outcome(conn, r, frozen, Outcome("succeeded"), now, key=refund["id"])

        assert transaction(s.api.parts.engine, old_news) is False
        assert s.get(refund["id"])["status"] == "submitted"
        assert_refund_first_sound(s.api)

    def test_fail_refund_refuses_while_the_rail_may_have_it(self, s: Session) -> None:
        """Staff cannot fail a refund whose instruction was sent: the rail's outcome decides."""
        s.top_up(100_000)
        s.order(1)
        refund = s.advance("o-1", 1_000)
        with s.api.parts.engine.begin() as conn:
            conn.execute(text("UPDATE outbox_instructions SET state = 'sent'"))
        with pytest.raises(Exception, match="may hold"):
            s.fail(refund["id"])
        assert s.get(refund["id"])["status"] == "submitted"

    def test_retry_only_failed(self, s: Session) -> None:
        s.top_up(100_000)
        s.order(1)
        refund = s.advance("o-1", 1_000)
        body = {"destination": {"rail": "card", "payment_reference": "x"}}
        assert_problem(s.call("finance", "POST", f"/v1/refunds/{refund['id']}/retry", body), 409, "illegal_transition")
        assert_problem(s.call("finance", "POST", f"/v1/refunds/{refund['id']}/retry",
                              {"destination": {"rail": "wire", "iban": "x"}}), 422, "validation_failed")  # fmt: skip


def test_every_change_is_audited_and_the_chain_verifies(s: Session) -> None:
    """Requests, approvals, recoveries, write-offs, confiscations: each one an audit record; the chain holds."""
    s.top_up(1_000_000)
    s.order(1, amount=90_000)
    pending = s.advance("o-1", 60_000)
    s.call("cp_supervisor", "POST", f"/v1/refunds/{pending['id']}/approve")
    audit.seal_all(s.api.parts.engine)
    assert audit.verify(s.api.parts.engine).ok
    with s.api.parts.engine.connect() as conn:
        actions = [r[0] for r in conn.execute(
            text("SELECT action FROM audit_records WHERE object_id = :o ORDER BY seq"), {"o": pending["id"]}
        ).all()]  # fmt: skip
    assert actions == ["refund.requested", "refund.approved", "refund.submitted", "refund.recovery_applied",
                       "refund.recovery_completed"]  # fmt: skip
