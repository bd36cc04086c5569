"""Fixtures of the simulator tests: one fresh in-process simulator per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.simulators.builders import Harness, make_harness


@pytest.fixture
def sim() -> Iterator[Harness]:
    """A fresh simulator per test, with a manual clock and a recording callback sender."""
    harness = make_harness()
    yield harness
    harness.client.close()
