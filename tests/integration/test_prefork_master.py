"""The pre-forked master's rebuild over a real database: workers' registries only apply changes,
the master builds the due base and keeps no connection open across its forks."""

from __future__ import annotations

from sqlalchemy import Engine

from escrow.api.prefork import MasterMatcher
from escrow.persistence.db import make_engine
from escrow.screening.registry import MatcherRegistry
from escrow.service.findings import DatabaseFindingSource
from tests.integration.conftest import Api
from tests.integration.test_findings_screening import GUCCI, create
from tests.unit.screening.test_registry_master import FakePool


def registry(api: Api, engine: Engine) -> MatcherRegistry:
    """A registry as every process of `escrow serve --workers N` has it, a base due at the first change."""
    return MatcherRegistry(DatabaseFindingSource(engine), api.clock.now, overlay_findings_max=0, rebuilds_base=False)


def idle_connections(engine: Engine) -> int:
    return int(engine.pool.checkedin()) + int(engine.pool.checkedout())  # type: ignore[attr-defined]


class TestMasterOverTheDatabase:
    def test_workers_apply_changes_past_the_bound_and_the_master_builds_and_rolls(self, api: Api) -> None:
        """A worker's registry shows create, confirm and dismiss through its overlay past the bound without
        building a base; the master's round builds it over the database, closes its connections, and rolls."""
        staff = api.key("ip_staff")
        master_engine = make_engine(api.db.url, pool_size=2)
        worker_engine = make_engine(api.db.url, pool_size=2)
        try:
            master, worker = registry(api, master_engine), registry(api, worker_engine)
            assert master.warm() and worker.warm()
            worker_base = worker.current().base
            assert idle_connections(master_engine) == 1  # what a fork would inherit, but for the round's dispose
            first = create(api, staff, kind="keyword", brand="Rolex", patterns=["rolex"])
            second = create(api, staff, **GUCCI, status="confirmed")
            api.client.post(f"/v1/findings/{first}/confirm", json={"reason": "test buy"}, headers=staff)
            assert worker.poll() is True
            screened = worker.current().screen("rolex gucci", None, None, now=api.clock.now())
            assert {m.finding_id: status for m, status in screened} == {first: "confirmed", second: "confirmed"}
            assert worker.base_due() and worker.current().base is worker_base
            api.client.post(f"/v1/findings/{second}/dismiss", json={"reason": "licensed"}, headers=staff)
            assert worker.poll() is True
            screened = worker.current().screen("rolex gucci", None, None, now=api.clock.now())
            assert [m.finding_id for m, _ in screened] == [first]
            assert worker.base_due() and worker.current().base is worker_base and not worker.rebuilding

            rounds = MasterMatcher(master, after_read=master_engine.dispose)
            pool = FakePool()
            old = pool.workers()
            master_base = master.current().base
            rounds.tick(pool, 0.0)
            assert master.current().base is not master_base and master.current().overlay.size == 0
            assert master.current().base.statuses.keys() == {first}
            assert not master.base_due()
            assert idle_connections(master_engine) == 0
            pool.boot()
            rounds.tick(pool, 0.1)
            pool.boot()
            rounds.tick(pool, 0.2)
            assert pool.retired == old and not rounds.rolling
            assert idle_connections(master_engine) == 0
        finally:
            master_engine.dispose()
            worker_engine.dispose()
