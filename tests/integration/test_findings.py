"""The findings API (DESIGN §5): register, read, list, confirm, dismiss, expire, party scope."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.conftest import Api
from tests.integration.test_api_errors_auth import assert_problem

KEYWORD = {"kind": "keyword", "brand": "Gucci", "patterns": ["gucci", "gg marmont"]}
SHAPE = {
    "id",
    "status",
    "kind",
    "brand",
    "patterns",
    "seller_ids",
    "listing_ids",
    "rights_holder_id",
    "jurisdiction",
    "severity",
    "evidence_url",
    "expires_at",
    "created_at",
    "updated_at",
}


def written(api: Api) -> dict[str, int]:
    """Rows of everything a findings change writes."""
    return {t: api.db.count(t) for t in ("findings", "audit_records", "events", "idempotency_keys")}


def revision(api: Api) -> int:
    with api.parts.engine.connect() as conn:
        return int(conn.execute(text("SELECT revision FROM finding_revision")).scalar_one())


def audit_actions(api: Api, object_id: str) -> list[tuple[str, str | None]]:
    with api.parts.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action, reason FROM audit_records WHERE object_id = :o ORDER BY seq"), {"o": object_id}
        ).all()
    return [(r.action, r.reason) for r in rows]


def event_types(api: Api) -> list[str]:
    with api.parts.engine.connect() as conn:
        return [str(t) for t in conn.execute(text("SELECT type FROM events ORDER BY seq")).scalars()]


def create(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = api.client.post("/v1/findings", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


class TestCreate:
    def test_ip_staff_registers_a_suspected_keyword_finding(self, api: Api) -> None:
        """A new finding has the documented shape, starts suspected, and writes one audit record and one event."""
        staff = api.key("ip_staff")
        body = {**KEYWORD, "severity": "high", "evidence_url": "https://example.test/e/1", "jurisdiction": "EU"}
        before = revision(api)
        finding = create(api, staff, **body)
        assert set(finding) == SHAPE
        assert finding["id"].startswith("fnd_")
        assert finding["status"] == "suspected"
        assert finding["patterns"] == ["gucci", "gg marmont"]
        assert finding["seller_ids"] == [] and finding["listing_ids"] == []
        assert finding["rights_holder_id"] is None
        assert finding["created_at"] == "2026-11-29T12:00:00Z"
        assert audit_actions(api, finding["id"]) == [("finding.created", None)]
        assert event_types(api) == ["finding.created"]
        assert revision(api) == before + 1
        assert api.client.get(f"/v1/findings/{finding['id']}", headers=staff).json() == finding

    def test_ip_staff_may_register_confirmed_for_a_rights_holder(self, api: Api) -> None:
        """IP staff choose the rights holder and may register a finding already confirmed."""
        finding = create(
            api, api.key("ip_staff"), kind="seller", brand="Rolex", seller_ids=["s1", "s1", "s2"],
            rights_holder_id="rh_rolex", status="confirmed",
        )  # fmt: skip
        assert finding["status"] == "confirmed"
        assert finding["rights_holder_id"] == "rh_rolex"
        assert finding["seller_ids"] == ["s1", "s2"]  # de-duplicated, order kept

    def test_rights_holder_party_and_status_are_forced(self, api: Api) -> None:
        """A rights holder registers for itself only, and its findings always start suspected."""
        holder = api.key("rights_holder", party="rh_lv")
        finding = create(api, holder, **KEYWORD, rights_holder_id="rh_other", status="confirmed")
        assert finding["rights_holder_id"] == "rh_lv"
        assert finding["status"] == "suspected"
        assert api.client.get(f"/v1/findings/{finding['id']}", headers=holder).json()["status"] == "suspected"

    @pytest.mark.parametrize("role", ["checkout", "finance", "cp_agent", "legal"])
    def test_other_roles_may_not_register(self, api: Api, role: str) -> None:
        """Roles outside ip_staff and rights_holder get 403 and nothing is written."""
        before = written(api)
        assert_problem(api.client.post("/v1/findings", json=KEYWORD, headers=api.key(role)), 403, "forbidden")
        assert written(api) == before

    def test_bad_patterns_are_422_naming_each_and_write_nothing(self, api: Api) -> None:
        """A pattern screening cannot use is refused with a message naming it, and nothing is written."""
        staff = api.key("ip_staff")
        before, rev = written(api), revision(api)
        body = {**KEYWORD, "patterns": ["gucci", "a", "x" * 201, "--"]}
        response = api.client.post("/v1/findings", json=body, headers=staff | {"Idempotency-Key": "k1"})
        problem = assert_problem(response, 422, "invalid_pattern")
        assert [e["field"] for e in problem["errors"]] == ["patterns.1", "patterns.2", "patterns.3"]
        assert "'a'" in problem["errors"][0]["message"] and "normalises" in problem["errors"][0]["message"]
        assert "more than 200" in problem["errors"][1]["message"]
        assert "'a'" in problem["detail"] and "(and 2 more)" in problem["detail"]
        assert {k: v for k, v in written(api).items() if k != "idempotency_keys"} == {
            k: v for k, v in before.items() if k != "idempotency_keys"
        }
        assert revision(api) == rev

    @pytest.mark.parametrize(
        ("body", "status", "code", "field"),
        [
            ({"kind": "keyword", "brand": "Gucci", "seller_ids": ["s1"]}, 422, "invalid_finding", "seller_ids"),
            ({"kind": "keyword", "brand": "Gucci", "patterns": []}, 422, "invalid_finding", "patterns"),
            ({"kind": "listing", "brand": "Gucci"}, 422, "invalid_finding", "listing_ids"),
            ({**KEYWORD, "brand": "   "}, 422, "invalid_finding", "brand"),
            ({**KEYWORD, "jurisdiction": "XX"}, 422, "invalid_finding", "jurisdiction"),
            ({**KEYWORD, "expires_at": "2026-11-29T11:00:00Z"}, 422, "invalid_finding", "expires_at"),
            ({**KEYWORD, "expires_at": "2026-12-29T11:00:00"}, 422, "validation_failed", "expires_at"),
            # The year 10000 in UTC: converting it overflowed, a 500.
            ({**KEYWORD, "expires_at": "9999-12-31T23:00:00-05:00"}, 422, "validation_failed", "expires_at"),
            ({**KEYWORD, "kind": "brand"}, 422, "validation_failed", "kind"),
            ({**KEYWORD, "colour": "red"}, 422, "validation_failed", "colour"),
            ({**KEYWORD, "patterns": ["gucci", 7]}, 422, "validation_failed", "patterns.1"),
            ({**KEYWORD, "evidence_url": "javascript:alert(1)"}, 422, "validation_failed", "evidence_url"),
            ({**KEYWORD, "severity": "extreme"}, 422, "validation_failed", "severity"),
            ({"kind": "seller", "brand": "B", "seller_ids": ["bad id"]}, 422, "validation_failed", "seller_ids.0"),
            ({**KEYWORD, "patterns": [f"brand{i}" for i in range(10_001)]}, 422, "validation_failed", "patterns"),
        ],
    )
    def test_bad_input_is_a_problem_and_writes_nothing(
        self, api: Api, body: dict[str, Any], status: int, code: str, field: str
    ) -> None:
        """Malformed or inconsistent findings are refused with the field named and nothing written."""
        staff = api.key("ip_staff")
        before = written(api)
        problem = assert_problem(api.client.post("/v1/findings", json=body, headers=staff), status, code)
        assert field in (problem.get("field"), *(e["field"] for e in problem.get("errors", [])))
        assert written(api) == before

    def test_idempotency_key_replays_and_refuses_another_body(self, api: Api) -> None:
        """The same key and body replay the first finding; the same key with another body is refused."""
        staff = api.key("ip_staff") | {"Idempotency-Key": "fnd-1"}
        first = api.client.post("/v1/findings", json=KEYWORD, headers=staff)
        again = api.client.post("/v1/findings", json=dict(reversed(KEYWORD.items())), headers=staff)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert api.db.count("findings") == 1 and event_types(api) == ["finding.created"]
        other = api.client.post("/v1/findings", json={**KEYWORD, "brand": "Prada"}, headers=staff)
        assert_problem(other, 422, "idempotency_key_reused")
        assert api.db.count("findings") == 1


class TestRead:
    def test_list_filters_and_paginates(self, api: Api) -> None:
        """Lists filter by status, kind, brand and rights holder, and page with starting_after."""
        staff = api.key("ip_staff")
        a = create(api, staff, **KEYWORD, rights_holder_id="rh_g")
        b = create(api, staff, kind="seller", brand="Rolex", seller_ids=["s1"], status="confirmed")
        c = create(api, staff, kind="listing", brand="GUCCI", listing_ids=["l1"], rights_holder_id="rh_g")
        d = create(api, staff, kind="keyword", brand="Prada", patterns=["prada"])

        def ids(query: str) -> list[str]:
            response = api.client.get(f"/v1/findings?{query}", headers=staff)
            assert response.status_code == 200, response.text
            return [f["id"] for f in response.json()["data"]]

        assert ids("") == [a["id"], b["id"], c["id"], d["id"]]
        assert ids("status=confirmed") == [b["id"]]
        assert ids("status=suspected") == [a["id"], c["id"], d["id"]]
        assert ids("kind=keyword") == [a["id"], d["id"]]
        assert ids("brand=gucci") == [a["id"], c["id"]]
        assert ids("rights_holder_id=rh_g&kind=listing") == [c["id"]]
        page = api.client.get("/v1/findings?limit=3", headers=staff).json()
        assert [f["id"] for f in page["data"]] == [a["id"], b["id"], c["id"]] and page["has_more"] is True
        rest = api.client.get(f"/v1/findings?limit=3&starting_after={c['id']}", headers=staff).json()
        assert [f["id"] for f in rest["data"]] == [d["id"]] and rest["has_more"] is False
        assert_problem(api.client.get("/v1/findings?starting_after=aud_1", headers=staff), 400, "invalid_cursor")
        assert_problem(api.client.get("/v1/findings?limit=201", headers=staff), 422, "validation_failed")
        assert_problem(api.client.get("/v1/findings?status=open", headers=staff), 422, "validation_failed")

    def test_rights_holder_sees_only_its_own(self, api: Api) -> None:
        """A rights holder lists and reads its own findings; another party's finding is 404, not 403."""
        mine = api.key("rights_holder", party="rh_a")
        theirs = api.key("rights_holder", party="rh_b")
        own = create(api, mine, **KEYWORD)
        other = create(api, theirs, **KEYWORD)
        staff_only = create(api, api.key("ip_staff"), **KEYWORD)
        listed = api.client.get("/v1/findings", headers=mine).json()
        assert [f["id"] for f in listed["data"]] == [own["id"]]
        spoofed = api.client.get("/v1/findings?rights_holder_id=rh_b", headers=mine).json()
        assert spoofed["data"] == []
        assert api.client.get(f"/v1/findings/{own['id']}", headers=mine).status_code == 200
        for finding in (other, staff_only):
            body = assert_problem(api.client.get(f"/v1/findings/{finding['id']}", headers=mine), 404, "not_found")
            assert body["detail"] == "finding not found"
        missing = api.client.get("/v1/findings/fnd_00000000000000000000000000", headers=mine)
        assert assert_problem(missing, 404, "not_found")["detail"] == "finding not found"

    @pytest.mark.parametrize("role", ["checkout", "finance", "cp_agent"])
    def test_other_roles_may_not_read(self, api: Api, role: str) -> None:
        """Reading findings needs ip_staff, a rights holder or admin."""
        finding = create(api, api.key("ip_staff"), **KEYWORD)
        assert_problem(api.client.get("/v1/findings", headers=api.key(role)), 403, "forbidden")
        assert_problem(api.client.get(f"/v1/findings/{finding['id']}", headers=api.key(role)), 403, "forbidden")


class TestTransitions:
    def test_confirm_then_dismiss(self, api: Api) -> None:
        """IP staff confirm a suspected finding and later dismiss it; each step is audited with its reason."""
        staff = api.key("ip_staff")
        finding = create(api, staff, **KEYWORD)
        api.clock.advance(timedelta(minutes=5))
        confirmed = api.client.post(f"/v1/findings/{finding['id']}/confirm", json={"reason": "test buy"}, headers=staff)
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["status"] == "confirmed"
        assert confirmed.json()["updated_at"] == "2026-11-29T12:05:00Z"
        assert confirmed.json()["created_at"] == finding["created_at"]
        dismissed = api.client.post(f"/v1/findings/{finding['id']}/dismiss", json={"reason": "licensed"}, headers=staff)
        assert dismissed.json()["status"] == "dismissed"
        assert api.client.get(f"/v1/findings/{finding['id']}", headers=staff).json()["status"] == "dismissed"
        assert audit_actions(api, finding["id"]) == [
            ("finding.created", None),
            ("finding.confirmed", "test buy"),
            ("finding.dismissed", "licensed"),
        ]
        assert event_types(api) == ["finding.created", "finding.confirmed", "finding.dismissed"]

    def test_illegal_transitions_are_409(self, api: Api) -> None:
        """A finding is confirmed once, dismissed once, and never confirmed after dismissal."""
        staff = api.key("ip_staff")
        finding = create(api, staff, **KEYWORD)
        path = f"/v1/findings/{finding['id']}"
        assert api.client.post(f"{path}/confirm", json={"reason": "r"}, headers=staff).status_code == 200
        assert_problem(
            api.client.post(f"{path}/confirm", json={"reason": "r"}, headers=staff), 409, "illegal_transition"
        )
        assert api.client.post(f"{path}/dismiss", json={"reason": "r"}, headers=staff).status_code == 200
        before = written(api)
        for action in ("confirm", "dismiss"):
            body = assert_problem(
                api.client.post(f"{path}/{action}", json={"reason": "r"}, headers=staff), 409, "illegal_transition"
            )
            assert "dismissed" in body["detail"]
        assert written(api) == before
        assert api.client.get(path, headers=staff).json()["status"] == "dismissed"

    def test_transitions_need_ip_staff_a_reason_and_a_real_finding(self, api: Api) -> None:
        """Rights holders cannot confirm their own findings; a missing reason is 422; an unknown id is 404."""
        holder = api.key("rights_holder", party="rh_a")
        staff = api.key("ip_staff")
        finding = create(api, holder, **KEYWORD)
        path = f"/v1/findings/{finding['id']}"
        assert_problem(api.client.post(f"{path}/confirm", json={"reason": "mine"}, headers=holder), 403, "forbidden")
        assert_problem(api.client.post(f"{path}/confirm", json={}, headers=staff), 422, "validation_failed")
        assert_problem(
            api.client.post("/v1/findings/fnd_00000000000000000000000000/confirm", json={"reason": "r"}, headers=staff),
            404,
            "not_found",
        )
        assert api.client.get(path, headers=staff).json()["status"] == "suspected"

    def test_confirm_replays_with_the_same_idempotency_key(self, api: Api) -> None:
        """A retried confirm with its key replays the first answer instead of failing as a repeat."""
        staff = api.key("ip_staff")
        finding = create(api, staff, **KEYWORD)
        headers = staff | {"Idempotency-Key": "confirm-1"}
        first = api.client.post(f"/v1/findings/{finding['id']}/confirm", json={"reason": "r"}, headers=headers)
        again = api.client.post(f"/v1/findings/{finding['id']}/confirm", json={"reason": "r"}, headers=headers)
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert event_types(api) == ["finding.created", "finding.confirmed"]

    def test_a_finding_expires(self, api: Api) -> None:
        """Past its expires_at a finding reads as expired, lists under status=expired, and takes no transition."""
        staff = api.key("ip_staff")
        finding = create(api, staff, **KEYWORD, status="confirmed", expires_at="2026-11-29T13:30:00+01:00")
        lasting = create(api, staff, **KEYWORD, expires_at="2026-11-29T14:00:00Z")
        assert finding["expires_at"] == "2026-11-29T12:30:00Z"  # stored and shown in UTC
        assert finding["status"] == "confirmed"
        api.clock.advance(timedelta(minutes=30))
        assert api.client.get(f"/v1/findings/{finding['id']}", headers=staff).json()["status"] == "expired"
        expired = api.client.get("/v1/findings?status=expired", headers=staff).json()["data"]
        assert [f["id"] for f in expired] == [finding["id"]]
        confirmed = api.client.get("/v1/findings?status=confirmed", headers=staff).json()["data"]
        assert confirmed == []
        suspected = api.client.get("/v1/findings?status=suspected", headers=staff).json()["data"]
        assert [f["id"] for f in suspected] == [lasting["id"]]
        body = assert_problem(
            api.client.post(f"/v1/findings/{finding['id']}/dismiss", json={"reason": "r"}, headers=staff),
            409,
            "illegal_transition",
        )
        assert "expired" in body["detail"]
