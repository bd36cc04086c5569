"""Payouts and payout accounts over HTTP, on both databases, against the in-process simulator."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from escrow.limits import AMOUNT_MINOR_MAX
from escrow.persistence.db import ItemsFailed
from escrow.persistence.tables import outbox_instructions
from escrow.service import payouts
from escrow.service.payout_accounts import AccountCipher, mask_iban
from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import assert_problem
from tests.integration.test_outbox_world import (
    CLOSED_IBAN,
    SELLER_IBAN,
    SETTLE_S,
    World,
    assert_outbox_invariants,
    balance,
)


@pytest.fixture
def w(api: Api) -> World:
    return World(api)


def events_of(w: World, kind: str) -> list[dict[str, object]]:
    response = w.call("finance", "GET", "/v1/events?limit=200")
    return [e for e in response.json()["data"] if e["type"] == kind]


class TestPayoutAccount:
    def test_put_stores_encrypted_and_shows_masked(self, w: World) -> None:
        """The IBAN is validated, encrypted at rest and only ever shown masked."""
        with structlog.testing.capture_logs() as logs:
            w.account("s-1")
        got = w.call("finance", "GET", "/v1/parties/s-1/payout-account")
        assert got.status_code == 200
        assert got.json()["iban_masked"] == "FR14 **** **** **** **** **** 2606"
        assert SELLER_IBAN not in got.text
        with w.api.parts.engine.connect() as conn:
            stored = conn.execute(text("SELECT * FROM payout_accounts")).mappings().one()
            audit_rows = conn.execute(text("SELECT data FROM audit_records")).all()
        assert SELLER_IBAN not in stored["iban_ciphertext"] and SELLER_IBAN not in str(audit_rows)
        assert w.rails.cipher.decrypt(stored["iban_ciphertext"]) == SELLER_IBAN
        assert SELLER_IBAN not in str(logs)

    def test_bad_iban_or_bic_is_422_and_writes_nothing(self, w: World) -> None:
        """A wrong checksum, a bad BIC or a float-free type error all answer 4xx problems and write nothing."""
        before = w.api.db.count("audit_records")
        for body in (
            {"holder_name": "X", "iban": "DE89370400440532013001"},
            {"holder_name": "X", "iban": SELLER_IBAN, "bic": "NOTABIC!"},
            {"holder_name": "X", "iban": 12345},
            {"holder_name": "", "iban": SELLER_IBAN},
            {"iban": SELLER_IBAN},
        ):
            response = w.call("finance", "PUT", "/v1/parties/s-1/payout-account", body)
            assert 400 <= response.status_code < 500, response.text
            assert response.headers["content-type"] == "application/problem+json"
        assert w.api.db.count("payout_accounts") == 0 and w.api.db.count("audit_records") == before

    def test_rights_holder_only_for_its_own_party(self, w: World) -> None:
        """A rights holder sets its own account; another party's answers 404, as if absent."""
        own = w.api.key("rights_holder", party="rh-1")
        body = {"holder_name": "Brand AG", "iban": SELLER_IBAN}
        assert w.api.client.put("/v1/parties/rh-1/payout-account", json=body, headers=own).status_code == 200
        assert_problem(w.api.client.put("/v1/parties/rh-2/payout-account", json=body, headers=own), 404, "not_found")
        assert_problem(w.api.client.get("/v1/parties/rh-2/payout-account", headers=own), 404, "not_found")
        assert_problem(w.call("checkout", "GET", "/v1/parties/rh-1/payout-account"), 403, "forbidden")

    def test_key_rotation_keeps_old_ciphertexts_readable(self) -> None:
        """A ring with a new key first still decrypts what the old key wrote, and rotates it."""
        old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
        token = AccountCipher([old]).encrypt(SELLER_IBAN)
        ring = AccountCipher([new, old])
        assert ring.decrypt(token) == SELLER_IBAN
        assert AccountCipher([new]).decrypt(ring.rotate(token)) == SELLER_IBAN

    def test_mask(self) -> None:
        """Country, check digits and the last four only."""
        assert mask_iban("DE89370400440532013000") == "DE89 **** **** **** **** 3000"


class TestPayoutFlow:
    def test_payable_is_swept_submitted_and_paid_on_booking(self, w: World) -> None:
        """Sweep → pending, worker → submitted, the bank's camt.054 → paid; books agree throughout."""
        w.account("s-1")
        w.confirmed_order(1, 10_000)
        w.confirmed_order(2, 5_000)
        assert w.sweep() == 1
        [p] = w.payouts()
        assert p["status"] == "pending" and p["amount"] == {"amount": 15_000, "currency": "EUR"}
        assert balance(w.api, "seller:s-1:payable") == 0 and balance(w.api, "in_transit:payouts") == 15_000
        assert_outbox_invariants(w)
        assert w.work() == 1
        assert w.payouts()[0]["status"] == "submitted"
        assert w.sweep() == 0  # nothing payable left
        w.advance(SETTLE_S + 1)
        assert w.payouts()[0]["status"] == "paid"
        assert balance(w.api, "in_transit:payouts") == 0 and balance(w.api, "clearing:bank") == 15_000
        assert [e["data"]["payout_id"] for e in events_of(w, "payout.paid")] == [p["id"]]  # type: ignore[index]
        assert_outbox_invariants(w)

    def test_a_seller_that_cannot_be_paid_does_not_stop_the_others(
        self, w: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A seller whose payout raises is logged and skipped; the sweep still pays the
        sellers after it, then reports the failure (it used to stop at the failing seller,
        and the whole worker round with it). The first seller the sweep reaches fails,
        whichever it is: the sweep's order is the database's."""
        for seller in ("s-1", "s-2", "s-3"):
            w.account(seller)
        for n, seller in enumerate(("s-1", "s-2", "s-3"), start=1):
            w.confirmed_order(n, 1_000 * n, seller=seller)
        real = payouts.destination_of
        failed: list[str] = []

        def first_breaks(conn: Any, party_id: str) -> Any:
            if not failed:
                failed.append(party_id)
                raise RuntimeError("a row the sweep cannot handle")
            return real(conn, party_id)

        monkeypatch.setattr(payouts, "destination_of", first_breaks)
        with pytest.raises(ItemsFailed, match="sweep_payouts: 1 failed"):
            w.sweep()
        paid = {p["party_id"] for p in w.payouts()}
        assert len(failed) == 1 and paid == {"s-1", "s-2", "s-3"} - set(failed)
        assert balance(w.api, f"seller:{failed[0]}:payable") > 0
        monkeypatch.setattr(payouts, "destination_of", real)
        assert w.sweep() == 1  # the next round pays it
        assert_outbox_invariants(w)

    def test_a_balance_above_one_payouts_bound_is_paid_in_several(self, w: World) -> None:
        """One payout carries at most 10^15 minor units; a payable balance above that (the
        sum of many orders) is paid by successive sweeps, a payout each, to the last unit
        (it used to fail every round, and the seller was never paid)."""
        w.account("s-1")
        w.confirmed_order(1, AMOUNT_MINOR_MAX)
        w.confirmed_order(2, AMOUNT_MINOR_MAX)
        w.confirmed_order(3, 5)
        for _ in range(3):
            assert w.sweep() == 1
        assert w.sweep() == 0
        amounts = sorted(p["amount"]["amount"] for p in w.payouts())
        assert amounts == [5, AMOUNT_MINOR_MAX, AMOUNT_MINOR_MAX]
        assert balance(w.api, "seller:s-1:payable") == 0
        assert balance(w.api, "in_transit:payouts") == 2 * AMOUNT_MINOR_MAX + 5
        assert w.work() == 3
        w.advance(SETTLE_S + 1)
        assert {p["status"] for p in w.payouts()} == {"paid"}
        assert balance(w.api, "in_transit:payouts") == 0
        assert balance(w.api, "clearing:bank") == 2 * AMOUNT_MINOR_MAX + 5
        assert_outbox_invariants(w)

    def test_no_account_or_frozen_seller_is_not_paid(self, w: World) -> None:
        """A seller without a payout account, or frozen, keeps its proceeds."""
        w.confirmed_order(1, 10_000)
        assert w.sweep() == 0
        w.account("s-1")
        assert w.call("ip_staff", "POST", "/v1/sellers/s-1/freeze", {"reason": "repeat offender"}).status_code == 200
        assert w.sweep() == 0
        assert balance(w.api, "seller:s-1:frozen") == 10_000
        assert_outbox_invariants(w)

    def test_rejection_at_settlement_fails_and_returns_money(self, w: World) -> None:
        """AM04 at settlement → failed, money back to payable, and not swept again by itself."""
        w.account("s-1")
        w.confirmed_order(1, 10_097)  # magic: rejected at settlement
        w.sweep()
        w.work()
        w.advance(SETTLE_S + 1)
        [p] = w.payouts()
        assert p["status"] == "failed" and p["failure_reason"] == "AM04"
        assert balance(w.api, "seller:s-1:payable") == 10_097
        assert w.sweep() == 0  # blocked until retried or the account changes
        assert events_of(w, "payout.failed")
        assert_outbox_invariants(w)

    def test_closed_account_fails_then_retry_to_the_new_account_pays(self, w: World) -> None:
        """AC04 at once → failed; finance retries (new EndToEndId) to the corrected account; once only."""
        w.account("s-1", iban=CLOSED_IBAN)
        w.confirmed_order(1, 10_000)
        w.sweep()
        w.work()
        [p] = w.payouts()
        assert p["status"] == "failed" and p["failure_reason"] == "AC04"
        assert w.sweep() == 0
        assert_problem(w.call("finance", "POST", "/v1/payouts/pay_00000000000000000000000000/retry"), 404, "not_found")
        w.account("s-1")
        retried = w.call("finance", "POST", f"/v1/payouts/{p['id']}/retry")
        assert retried.status_code == 201, retried.text
        assert retried.json()["retry_of"] == p["id"] and retried.json()["end_to_end_id"] != p["end_to_end_id"]
        assert_problem(w.call("finance", "POST", f"/v1/payouts/{p['id']}/retry"), 409, "illegal_transition")
        assert w.sweep() == 0  # nothing left payable
        w.work()
        w.advance(SETTLE_S + 1)
        assert {x["status"] for x in w.payouts()} == {"failed", "paid"}
        assert_problem(
            w.call("finance", "POST", f"/v1/payouts/{retried.json()['id']}/retry"), 409, "illegal_transition"
        )
        assert_outbox_invariants(w)

    def test_return_after_booking_puts_money_back_frozen_if_seller_frozen(self, w: World) -> None:
        """A bank return reverses a paid payout, into frozen when the seller was frozen meanwhile."""
        w.account("s-1")
        w.confirmed_order(1, 10_000)
        w.sweep()
        w.work()
        w.advance(SETTLE_S + 1)
        [p] = w.payouts()
        assert p["status"] == "paid"
        assert w.call("ip_staff", "POST", "/v1/sellers/s-1/freeze", {"reason": "fraud"}).status_code == 200
        assert w.sim.post("/control/bank/returns", json={"end_to_end_id": p["end_to_end_id"]}).status_code == 200
        w.advance(0)
        assert w.payouts()[0]["status"] == "returned"
        assert balance(w.api, "seller:s-1:frozen") == 10_000 and balance(w.api, "clearing:bank") == 0
        assert events_of(w, "payout.returned")
        assert_outbox_invariants(w)

    def test_return_before_booking_is_applied_once(self, w: World) -> None:
        """Magic 92: the return overtakes its booking; the payout ends returned, the money payable."""
        w.account("s-1")
        w.confirmed_order(1, 10_092)
        w.sweep()
        w.work()
        w.advance(SETTLE_S + 1)
        assert w.payouts()[0]["status"] == "returned"
        assert balance(w.api, "seller:s-1:payable") == 10_092
        assert_outbox_invariants(w)

    def test_response_lost_is_resolved_by_asking_not_resending(self, w: World) -> None:
        """Magic 94 (executed, then 504): the next attempt asks by key; the bank executed it once."""
        w.account("s-1")
        w.confirmed_order(1, 10_094)
        w.sweep()
        w.work()
        with w.api.parts.engine.connect() as conn:
            row = conn.execute(text("SELECT state, attempts, last_error FROM outbox_instructions")).one()
        assert row.state == "pending" and "outcome_unknown" in row.last_error
        w.advance(120)  # past the backoff; the simulator books it meanwhile
        w.work()
        w.advance(1)
        assert w.payouts()[0]["status"] == "paid"
        [t] = w.books()["bank"]["transfers"]
        assert t["executions"] == 1
        assert_outbox_invariants(w)

    def test_rail_down_backs_off_alerts_and_delivers_once_the_rail_is_back(self, w: World) -> None:
        """503s are retried with the same key and growing waits; past attempts_max people are told, and
        the instruction keeps going (its money is in transit) until the rail is back: then paid once."""
        w.account("s-1")
        w.confirmed_order(1, 10_000)
        w.sweep()
        w.fault({"operation": "bank.credit_transfer", "fault": "error_5xx", "status_code": 503, "times": None})
        w.fault({"operation": "bank.transfer_status", "fault": "error_5xx", "status_code": 503, "times": None})
        waits = []
        for _ in range(w.policy.attempts_max):
            w.work()
            with w.api.parts.engine.connect() as conn:
                row = conn.execute(select(outbox_instructions)).one()
            waits.append((row.next_attempt_at - w.api.clock.now()).total_seconds())
            w.advance(3600)
        assert row.state == "pending" and row.attempts == w.policy.attempts_max
        assert waits[0] < waits[3]  # exponential, jittered
        assert w.payouts()[0]["status"] == "pending"
        assert w.books()["executions"] == {}
        stuck = w.call("finance", "GET", "/v1/events?type=instruction.stuck").json()["data"]
        assert [e["data"]["key"] for e in stuck] == [row.key]
        w.sim.delete("/control/faults")
        w.work()
        w.advance(3600)
        w.work()
        assert w.payouts()[0]["status"] == "paid"
        assert list(w.books()["executions"].values()) == [1]
        assert_outbox_invariants(w)

    def test_list_and_read_are_finance_only(self, w: World) -> None:
        """Other roles get 403; unknown ids 404; bad ids 422."""
        assert_problem(w.call("checkout", "GET", "/v1/payouts"), 403, "forbidden")
        assert_problem(w.call("finance", "GET", "/v1/payouts/pay_00000000000000000000000000"), 404, "not_found")
        assert w.call("finance", "GET", "/v1/payouts/nope").status_code == 422
        assert w.call("finance", "GET", "/v1/payouts?status=bogus").status_code == 422
