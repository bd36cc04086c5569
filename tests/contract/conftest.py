"""Every contract test runs once per implementation of its port: the fake and the real adapter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.worlds import (
    BankWorld,
    CardWorld,
    FakeBankWorld,
    FakeCardWorld,
    Simulator,
    SimulatorBankWorld,
    SimulatorCardWorld,
)


@pytest.fixture(params=["fake", "simulator"])
def bank(request: pytest.FixtureRequest) -> Iterator[BankWorld]:
    """A fresh bank world per test, for each implementation of BankRail."""
    world: FakeBankWorld | SimulatorBankWorld = FakeBankWorld() if request.param == "fake" else SimulatorBankWorld()
    yield world
    if isinstance(world, SimulatorBankWorld):
        world.sim.client.close()


@pytest.fixture(params=["fake", "simulator"])
def card(request: pytest.FixtureRequest) -> Iterator[CardWorld]:
    """A fresh card world per test, for each implementation of CardRail."""
    world: FakeCardWorld | SimulatorCardWorld = FakeCardWorld() if request.param == "fake" else SimulatorCardWorld()
    yield world
    if isinstance(world, SimulatorCardWorld):
        world.sim.client.close()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A bare simulator for tests of one implementation (wire details, webhooks)."""
    simulator = Simulator()
    yield simulator
    simulator.client.close()
