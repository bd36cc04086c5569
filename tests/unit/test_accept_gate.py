"""The accept gate's table: who is a sibling, and when a worker lets a connection pass."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from escrow.api.balance import ACCEPT_DEFER_MAX_S, AcceptGate


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _sibling(gate: AcceptGate, slot: int, pid: int, connections: int) -> None:
    gate._table[2 * slot], gate._table[2 * slot + 1] = pid, connections  # another worker's writes


def test_a_worker_alone_never_defers() -> None:
    gate = AcceptGate(slots=4)
    gate.join()
    assert gate.least_loaded_sibling() is None
    started = time.monotonic()
    asyncio.run(gate.turn(lambda: 50))
    assert time.monotonic() - started < ACCEPT_DEFER_MAX_S


def test_the_busier_worker_defers_at_most_the_bound_and_the_other_does_not() -> None:
    gate = AcceptGate(slots=4)
    gate.join()
    _sibling(gate, 1, os.getppid(), 2)
    assert gate.least_loaded_sibling() == 2
    started = time.monotonic()
    asyncio.run(gate.turn(lambda: 2))  # level: accept at once
    assert time.monotonic() - started < ACCEPT_DEFER_MAX_S
    started = time.monotonic()
    asyncio.run(gate.turn(lambda: 3))  # one more than the sibling: wait for it, but not forever
    waited = time.monotonic() - started
    assert ACCEPT_DEFER_MAX_S <= waited < 1.0


def test_dead_workers_are_ignored_and_their_slots_reused_and_leaving_frees_the_slot() -> None:
    gate = AcceptGate(slots=2)
    _sibling(gate, 0, _dead_pid(), 0)
    _sibling(gate, 1, os.getppid(), 5)
    assert gate.least_loaded_sibling() == 5  # the dead worker's 0 does not count
    gate.join()  # takes the dead worker's slot
    assert gate._table[0] == os.getpid()
    gate.publish(7)
    assert gate._table[1] == 7
    gate.leave()
    assert gate._table[0] == 0 and gate._table[1] == 0
