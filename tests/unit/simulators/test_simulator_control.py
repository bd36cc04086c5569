"""The control surface: clock, ticks, books, persistence, reset and the standalone runner."""

from __future__ import annotations

import ast
import time
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from simulators import SimClock, SimulatorConfig, create_app
from simulators.__main__ import config_from_args, parse_args
from simulators.money import decimal_str_to_minor, minor_to_decimal_str
from tests.unit.simulators.builders import (
    Harness,
    a_payment,
    make_harness,
    sepa_pain001,
    tx_statuses,
)

SIMULATORS_DIR = Path(__file__).resolve().parents[3] / "simulators"


class TestClock:
    """POST /control/clock."""

    def test_advance_and_set_move_forward(self, sim: Harness) -> None:
        """The clock advances by seconds or jumps to a later instant."""
        moved = sim.client.post("/control/clock", json={"advance_s": 90}).json()
        assert moved["now"] == "2026-03-02T09:01:30+00:00"
        jumped = sim.client.post("/control/clock", json={"now": "2026-03-05T00:00:00Z"})
        assert jumped.json()["now"] == "2026-03-05T00:00:00+00:00"
        assert sim.client.get("/control/clock").json() == jumped.json()

    def test_the_clock_never_moves_backwards(self, sim: Harness) -> None:
        """Setting an earlier time, or giving neither field, is a 422."""
        back = sim.client.post("/control/clock", json={"now": "2026-03-01T00:00:00Z"})
        assert back.status_code == 422
        assert back.json()["code"] == "clock_backwards"
        assert sim.client.post("/control/clock", json={}).status_code == 422
        assert sim.client.post("/control/clock", json={"advance_s": -1}).status_code == 422

    def test_wall_clock_follows_real_time_plus_offset(self) -> None:
        """A wall clock moved forward by an hour stays an hour ahead."""
        clock = SimClock.wall()
        before = clock.now()
        clock.advance(timedelta(hours=1))
        assert 3600 <= (clock.now() - before).total_seconds() < 3660


class TestBooks:
    """GET /control/ledger."""

    def test_books_count_each_instruction_once_across_retries(self, sim: Harness) -> None:
        """Retries and replays raise `requests`, never `executions`."""
        for _ in range(3):
            sim.post_pain001(sepa_pain001([a_payment("pay_1"), a_payment("pay_2", amount=1)]))
        sim.advance(60)
        sim.tick()
        books = sim.client.get("/control/books").json()
        assert books["executions"] == {"bank:pay_1": 1, "bank:pay_2": 1}
        assert books["executed_more_than_once"] == []
        assert books["bank"]["totals"] == [
            {
                "currency": "EUR",
                "executed": 2000,
                "booked": 2000,
                "returned": 0,
                "rejected_after_acceptance": 0,
                "net_moved": 2000,
            }
        ]
        assert [t["requests"] for t in books["bank"]["transfers"]] == [3, 3]

    def test_reset_forgets_everything_but_the_clock(self, sim: Harness) -> None:
        """After a reset the books are empty, the clock stays and webhook-ids do not repeat."""
        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        sim.advance(60)
        sim.tick()
        assert sim.client.post("/control/reset").status_code == 204
        assert sim.ledger()["executions"] == {}
        assert sim.client.get("/control/clock").json()["now"] == "2026-03-02T09:01:00+00:00"
        sim.post_pain001(sepa_pain001([a_payment("pay_1")]))
        sim.advance(60)
        sim.tick()
        before, after = (r.headers["webhook-id"] for r in sim.sender.requests)
        assert before != after


class TestPersistence:
    """The optional JSON state file."""

    def test_restart_keeps_books_and_pending_settlements(self, tmp_path: Path) -> None:
        """A simulator restarted on the same file replays, settles and notifies as before."""
        state = tmp_path / "sim.json"
        first = make_harness(state_path=state)
        first.post_pain001(sepa_pain001([a_payment("pay_1")]))
        first.client.close()
        second = make_harness(state_path=state)
        replay = second.post_pain001(sepa_pain001([a_payment("pay_1")]))
        assert replay.headers["idempotent-replayed"] == "true"
        second.advance(60)
        second.tick()
        status = second.client.get("/bank/v1/credit-transfers/pay_1")
        assert tx_statuses(status.content) == {"pay_1": ("ACSC", None)}
        assert second.ledger()["executions"] == {"bank:pay_1": 1}
        assert len(second.sender.requests) == 1


class TestStandalone:
    """`python -m simulators` and its background ticker."""

    def test_cli_builds_webhook_urls_from_the_base(self) -> None:
        """--webhook-url is a base: the bank and card rails get their own path under it."""
        args = parse_args(["--webhook-url", "http://127.0.0.1:8000/v1/webhooks/", "--webhook-secret", "whsec_x"])
        config = config_from_args(args)
        assert config.bank_webhook_url == "http://127.0.0.1:8000/v1/webhooks/bank"
        assert config.card_webhook_url == "http://127.0.0.1:8000/v1/webhooks/card"
        assert config.card_webhook_secret == config.bank_webhook_secret == args.webhook_secret
        assert config.tick_interval_s == 1.0

    def test_background_ticker_settles_without_a_tick_call(self) -> None:
        """With tick_interval_s set, a served app settles on its own on wall time."""
        config = SimulatorConfig(settle_delay_s=0.0, tick_interval_s=0.02)
        with TestClient(create_app(config)) as client:
            client.post("/bank/v1/credit-transfers", content=sepa_pain001([a_payment("pay_1")]))
            deadline = time.monotonic() + 3.0
            status: dict[str, tuple[str, str | None]] = {}
            while time.monotonic() < deadline:
                status = tx_statuses(client.get("/bank/v1/credit-transfers/pay_1").content)
                if status["pay_1"][0] == "ACSC":
                    break
                time.sleep(0.02)
        assert status == {"pay_1": ("ACSC", None)}


class TestMoney:
    """Exact conversion between minor units and ISO 20022 decimal strings."""

    @given(
        amount=st.integers(min_value=0, max_value=10**15),
        currency=st.sampled_from(["JPY", "EUR", "KWD", "CLF"]),
    )
    def test_round_trip_is_exact(self, amount: int, currency: str) -> None:
        """Formatting then parsing any amount gives it back unchanged."""
        assert decimal_str_to_minor(minor_to_decimal_str(amount, currency), currency) == amount

    def test_exponents(self) -> None:
        """JPY has no decimals, KWD three, EUR two."""
        assert [minor_to_decimal_str(1234, c) for c in ("JPY", "EUR", "KWD")] == [
            "1234",
            "12.34",
            "1.234",
        ]


class TestIndependence:
    """The simulator is a black box: it shares no code with the service."""

    def test_simulators_import_nothing_from_escrow_or_adapters(self) -> None:
        """No module under simulators/ imports escrow or adapters."""
        offenders = []
        for path in sorted(SIMULATORS_DIR.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] in {"escrow", "adapters"}]
        assert offenders == []
        assert len(list(SIMULATORS_DIR.rglob("*.py"))) > 5
