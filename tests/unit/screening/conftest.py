"""Fixtures of the registry tests: a manual clock and an in-memory source of four findings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from escrow.ports import ManualClock
from tests.unit.screening.test_registry import T0, MemorySource


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def source(clock: ManualClock) -> MemorySource:
    source = MemorySource(clock)
    source.create("fnd_sus", "suspected", "gucci")
    source.create("fnd_con", "confirmed", "rolex")
    source.create("fnd_exp", "confirmed", "chanel", expires_at=T0 + timedelta(minutes=10))
    source.create("fnd_base", "confirmed", "hermes")  # makes the base more than two findings
    return source
