"""Auth, roles, party scope and problem+json errors over the HTTP API, on both databases."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from escrow.api.deps import visible
from escrow.auth import Principal, Role
from escrow.errors import NotFound
from escrow.limits import REQUEST_BODY_BYTES_MAX
from escrow.logs import configure
from tests.integration.conftest import Api

DEPOSIT = {"amount": {"amount": 5000, "currency": "EUR"}, "reference": "dep-1"}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert {"type", "title", "detail"} <= set(body)
    assert "Traceback" not in response.text
    return body


class TestAuthentication:
    @pytest.mark.parametrize(
        "header",
        [None, "Bearer", "Basic abc", "Bearer esk_key_0000000000000000_nope", "Bearer esk_bad", "Bearer x" * 50],
    )
    def test_missing_or_bad_key_is_401(self, api: Api, header: str | None) -> None:
        """No key, a malformed key or an unknown key gets 401 unauthenticated."""
        headers = {"Authorization": header} if header else {}
        assert_problem(api.client.get("/v1/ledger/trial-balance", headers=headers), 401, "unauthenticated")

    def test_wrong_secret_for_a_real_key_id_is_401(self, api: Api) -> None:
        """Knowing a key id is not enough: the secret must match."""
        real = api.key("finance")["Authorization"]
        forged = real[: real.rindex("_") + 1] + "A" * 43
        assert_problem(
            api.client.get("/v1/ledger/trial-balance", headers={"Authorization": forged}), 401, "unauthenticated"
        )

    def test_revoked_key_is_401(self, api: Api) -> None:
        """A revoked key stops working (the test app caches nothing)."""
        from escrow.auth import revoke_key

        headers = api.key("finance")
        assert api.client.get("/v1/ledger/trial-balance", headers=headers).status_code == 200
        key_id = "key_" + headers["Authorization"].split("_")[2]
        with api.parts.engine.begin() as conn:
            revoke_key(conn, key_id, now=api.clock.now())
        assert_problem(api.client.get("/v1/ledger/trial-balance", headers=headers), 401, "unauthenticated")

    def test_only_a_digest_is_stored(self, api: Api) -> None:
        """The database never holds the key's secret."""
        secret = api.key("admin")["Authorization"].split("_", 3)[3]
        with api.parts.engine.connect() as conn:
            from sqlalchemy import text

            stored = conn.execute(text("SELECT digest, name FROM api_keys")).all()
        assert all(secret not in "".join(map(str, row)) for row in stored)


class TestRoles:
    @pytest.mark.parametrize("role", ["checkout", "cp_agent", "legal", "ip_staff"])
    def test_wrong_role_is_403(self, api: Api, role: str) -> None:
        """A valid key of a role without the right gets 403 forbidden and writes nothing."""
        before = api.db.counts()
        assert_problem(api.client.get("/v1/ledger/trial-balance", headers=api.key(role)), 403, "forbidden")
        response = api.client.post("/v1/sellers/s1/deposit", json=DEPOSIT, headers=api.key("checkout"))
        assert_problem(response, 403, "forbidden")
        assert {k: v for k, v in api.db.counts().items() if k != "api_keys"} == {
            k: v for k, v in before.items() if k != "api_keys"
        }

    def test_rights_holder_sees_only_its_own_party(self) -> None:
        """Party scope: another party's object is NotFound (404), never Forbidden."""
        holder = Principal("key_1", "rh", Role.RIGHTS_HOLDER, "rh_a")
        visible(holder, "rh_a", "claim")
        with pytest.raises(NotFound):
            visible(holder, "rh_b", "claim")
        with pytest.raises(NotFound):
            visible(holder, None, "claim")
        visible(Principal("key_2", "staff", Role.LEGAL, None), "rh_b", "claim")


class TestProblems:
    def test_unknown_route_is_404_problem(self, api: Api) -> None:
        assert_problem(api.client.get("/v1/nothing-here"), 404, "not_found")

    def test_wrong_method_is_405_problem(self, api: Api) -> None:
        assert_problem(api.client.delete("/healthz"), 405, "method_not_allowed")

    def test_malformed_json_is_400(self, api: Api) -> None:
        """A body that is not JSON is 400 malformed_json and writes nothing."""
        before = api.db.counts()
        response = api.client.post(
            "/v1/sellers/s1/deposit",
            content=b'{"amount": {"amount": 5',
            headers={**api.key("finance"), "Content-Type": "application/json"},
        )
        assert_problem(response, 400, "malformed_json")
        assert api.db.counts()["journal_entries"] == before["journal_entries"]

    def test_an_oversized_body_is_413_and_writes_nothing(self, api: Api) -> None:
        """Bodies are capped (REQUEST_BODY_BYTES_MAX): no request can make a process buffer without bound."""
        checkout = api.key("checkout")
        order = {"order_id": "o-big", "buyer_id": "b", "seller_id": "s", "listing_id": "l", "title": "t",
                 "amount": {"amount": 100, "currency": "EUR"}, "payment": {"method": "card", "reference": "p"},
                 "jurisdiction": "EU"}  # fmt: skip
        padded = json.dumps(order).encode()[:-1] + b" " * REQUEST_BODY_BYTES_MAX + b"}"
        for path, body in (("/v1/orders", padded), ("/v1/orders:batch", b'{"orders": [' + padded + b"]}")):
            response = api.client.post(path, content=body, headers={**checkout, "Content-Type": "application/json"})
            assert_problem(response, 413, "payload_too_large")

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield padded[: len(padded) // 2]
            yield padded[len(padded) // 2 :]

        response = api.client.post(
            "/v1/orders", content=chunked(), headers={**checkout, "Content-Type": "application/json"}
        )
        assert_problem(response, 413, "payload_too_large")
        assert api.db.count("orders") == 0 and api.db.count("journal_entries") == 0

    def test_non_json_body_is_415(self, api: Api) -> None:
        response = api.client.post(
            "/v1/sellers/s1/deposit",
            content=b"amount=5",
            headers={**api.key("finance"), "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_problem(response, 415, "unsupported_media_type")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({**DEPOSIT, "amount": {"amount": 50.5, "currency": "EUR"}}, "amount.amount"),
            ({**DEPOSIT, "amount": {"amount": 50.0, "currency": "EUR"}}, "amount.amount"),
            ({**DEPOSIT, "amount": {"amount": "5000", "currency": "EUR"}}, "amount.amount"),
            ({**DEPOSIT, "amount": {"amount": 0, "currency": "EUR"}}, "amount.amount"),
            ({**DEPOSIT, "amount": {"amount": -5, "currency": "EUR"}}, "amount.amount"),
            ({**DEPOSIT, "amount": {"amount": 10**15 + 1, "currency": "EUR"}}, "amount.amount"),
            ({**DEPOSIT, "amount": {"amount": 5, "currency": "EUX"}}, "amount.currency"),
            ({**DEPOSIT, "amount": 5000}, "amount"),
            ({**DEPOSIT, "surprise": 1}, "surprise"),
            ({"amount": DEPOSIT["amount"]}, "reference"),
            ([], "body"),
        ],
    )
    def test_invalid_body_is_422_with_field_errors(self, api: Api, body: Any, field: str) -> None:
        """Each invalid field is named in `errors`, and nothing is written."""
        before = api.db.counts()
        response = api.client.post("/v1/sellers/s1/deposit", json=body, headers=api.key("finance"))
        problem = assert_problem(response, 422, "validation_failed")
        assert field in [e["field"] for e in problem["errors"]], problem
        after = api.db.counts()
        assert after["journal_entries"] == before["journal_entries"] == 0
        assert after["audit_records"] == 0 and after["idempotency_keys"] == 0

    @pytest.mark.parametrize(
        "url",
        [
            "/v1/holds?seller_id=a%00b",
            "/v1/holds?order_id=a%00b",
            "/v1/audit?object_id=a%00b",
            "/v1/events?type=a%00b",
            "/v1/findings?brand=a%00b",
            "/v1/findings?rights_holder_id=a%00b",
            "/v1/payouts?party_id=a%00b",
            "/v1/refunds?seller_id=a%00b&limit=5",
            "/v1/refunds?starting_after=a%00b",
            "/v1/ledger/accounts/order:a%00b:escrow",
            "/v1/sellers/a%00b",
        ],
    )
    def test_a_nul_in_the_url_is_422_for_every_route(self, api: Api, url: str) -> None:
        """PostgreSQL text cannot hold NUL: a query or path value with one is bad input, never a
        500 from the driver (it was one on several list filters)."""
        problem = assert_problem(api.client.get(url, headers=api.key("admin")), 422, "validation_failed")
        field = "path" if "?" not in url else url.split("?")[1].split("&")[0].split("=")[0]
        assert problem["errors"] == [{"field": field, "message": "must not contain NUL (%00)"}]

    @pytest.mark.parametrize(
        "url",
        [
            "/v1/events?after=evt_%C2%B2",  # a superscript two: a digit to isdigit(), not to int()
            "/v1/events?after=evt_%D9%A1%D9%A2",  # Arabic-Indic digits
            "/v1/audit?object_id=o-1&starting_after=aud_%C2%B2",
            "/v1/audit?object_id=o-1&starting_after=aud_" + "9" * 36,  # beyond the bigint column
        ],
    )
    def test_a_cursor_of_other_digits_is_400(self, api: Api, url: str) -> None:
        assert_problem(api.client.get(url, headers=api.key("admin")), 400, "invalid_cursor")

    def test_a_body_that_is_not_utf8_is_malformed_json(self, api: Api) -> None:
        response = api.client.post(
            "/v1/orders",
            content=b'{"order_id": "\xff\xfe"}',
            headers={**api.key("checkout"), "Content-Type": "application/json"},
        )
        assert_problem(response, 400, "malformed_json")

    def test_a_lone_surrogate_in_a_body_is_422(self, api: Api) -> None:
        """JSON may escape a lone surrogate, which UTF-8 cannot hold: bad input, not a 500."""
        headers = {**api.key("checkout"), "Content-Type": "application/json"}
        for body in (b'{"\\ud800": 1}', b'{"order_id": "\\ud800"}'):
            assert_problem(api.client.post("/v1/orders", content=body, headers=headers), 422, "validation_failed")
        assert api.db.count("orders") == 0

    def test_invalid_path_id_is_422(self, api: Api) -> None:
        response = api.client.post("/v1/sellers/bad%20id;/deposit", json=DEPOSIT, headers=api.key("finance"))
        assert_problem(response, 422, "validation_failed")

    def test_unexpected_exception_is_500_without_trace(self, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
        """An internal failure answers a bare 500 problem with the request id; no stack trace leaks."""
        import escrow.api.routers.sellers as sellers

        def explode(*_: Any, **__: Any) -> Any:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(sellers, "record_deposit", explode)
        response = api.client.post(
            "/v1/sellers/s1/deposit", json=DEPOSIT, headers={**api.key("finance"), "X-Request-Id": "req-500"}
        )
        body = assert_problem(response, 500, "internal_error")
        assert body["detail"] == "internal error" and body["request_id"] == "req-500"
        assert "secret internals" not in response.text
        assert api.db.count("journal_entries") == 0


class TestLogs:
    def test_request_id_round_trip_and_log_fields(self, api: Api, capsys: pytest.CaptureFixture[str]) -> None:
        """Logs are JSON lines carrying request id, principal and route; never the API key."""
        configure("info", "json")
        try:
            headers = api.key("finance")
            key = headers["Authorization"].split(" ", 1)[1]
            response = api.client.post(
                "/v1/sellers/s1/deposit",
                json={**DEPOSIT, "reason": f"note with key {key} and iban DE89370400440532013000"},
                headers={**headers, "X-Request-Id": "req-abc-123"},
            )
            assert response.status_code == 201
            assert response.headers["x-request-id"] == "req-abc-123"
            structlog.get_logger("t").info(
                "probe", authorization=headers["Authorization"], iban="DE89370400440532013000"
            )
            out = capsys.readouterr().out
        finally:
            structlog.reset_defaults()
        lines = [json.loads(line) for line in io.StringIO(out) if line.startswith("{")]
        finished = [line for line in lines if line["event"] == "request_finished"]
        assert finished and finished[-1]["request_id"] == "req-abc-123"
        assert finished[-1]["route"] == "/v1/sellers/{seller_id}/deposit"
        assert finished[-1]["principal"].startswith("key_")
        assert key not in out and "DE89370400440532013000" not in out

    def test_malformed_request_id_is_replaced(self, api: Api) -> None:
        response = api.client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
        assert response.headers["x-request-id"].startswith("req_")


class TestHealth:
    def test_healthz_and_readyz(self, api: Api) -> None:
        assert api.client.get("/healthz").json() == {"status": "ok"}
        ready = api.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

    def test_readyz_is_503_when_schema_is_behind(self, api: Api) -> None:
        from sqlalchemy import text

        with api.parts.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))
        assert_problem(api.client.get("/readyz"), 503, "schema_not_at_head")

    def test_metrics_are_prometheus_text(self, api: Api) -> None:
        api.client.get("/healthz")
        metrics = api.client.get("/metrics")
        assert metrics.status_code == 200 and "escrow_http_requests_total" in metrics.text

    def test_a_method_the_client_invents_is_counted_as_other(self, api: Api) -> None:
        """Every label value is a series kept forever: a client must not be able to add them."""
        for n in range(3):
            assert api.client.request(f"BREW{n}", "/healthz").status_code == 405
        text = api.client.get("/metrics").text
        assert "BREW" not in text and 'method="other",route="/healthz",status="405"' in text
