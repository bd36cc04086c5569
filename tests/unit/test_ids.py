"""Ids: the fast encoding must be exactly ULID's Crockford base32, and ids must sort by time."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import given
from hypothesis import strategies as st

from escrow import ids
from escrow.ids import encode_ulid, new_id

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


@contextmanager
def pinned(random: int) -> Iterator[int]:
    """The id state as if the last id were made 10 s from now with `random`; yields that millisecond.

    Every id made inside is a successor of it. Afterwards the state is forgotten, so later
    ids move on from the real time.
    """
    now_ms = time.time_ns() // 1_000_000 + 10_000
    with ids._lock:
        ids._last_ms, ids._last_random = now_ms, random
        ids._last_text = encode_ulid(now_ms << 80 | random)
    try:
        yield now_ms
    finally:
        with ids._lock:
            ids._last_ms = -1


def reference(value: int) -> str:
    """The definition: 26 digits of 5 bits, most significant first."""
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_encoding_matches_the_definition(value: int) -> None:
    assert encode_ulid(value) == reference(value)


def test_edges() -> None:
    assert encode_ulid(0) == "0" * 26
    assert encode_ulid(2**128 - 1) == "7" + "z" * 25


def test_shape_and_time_order() -> None:
    first = new_id("ent")
    time.sleep(0.002)
    second = new_id("ent")
    assert re.fullmatch(r"ent_[0-9a-hjkmnp-tv-z]{26}", first)
    assert first < second


def test_ids_of_one_process_strictly_increase_even_within_a_millisecond() -> None:
    ids = [new_id("x") for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_successors_within_a_millisecond_are_encoded_in_full_form() -> None:
    """The one-digit shortcut for a successor equals the full encoding, carries included."""
    # Pin the clock to one millisecond and start the random part just below a carry into
    # the last two digits and beyond, so the shortcut and its fallback both run.
    with pinned((1 << 15) - 40) as now_ms:
        made = [new_id("x") for _ in range(100)]
    start = (1 << 15) - 39
    assert made == [f"x_{reference(now_ms << 80 | start + k)}" for k in range(100)]


def test_threads_never_share_an_id() -> None:
    made: list[list[str]] = [[] for _ in range(8)]

    def make(slot: list[str]) -> None:
        slot.extend(new_id("x") for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(slot,)) for slot in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for slot in made for i in slot]
    assert len(set(every)) == len(every) == 40_000
    assert all(slot == sorted(slot) for slot in made)


def test_a_forked_child_does_not_continue_its_parents_sequence() -> None:
    """A child's first id within its parent's last millisecond must not be the parent's next id."""
    with pinned(1 << 40) as now_ms:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its first id and leave at once
            os.write(write, new_id("x").encode())
            os._exit(0)
        os.close(write)
        try:
            _, status = os.waitpid(pid, 0)
            child = os.read(read, 100).decode()
        finally:
            os.close(read)
        parent = new_id("x")
    assert os.WEXITSTATUS(status) == 0
    assert parent == f"x_{reference(now_ms << 80 | (1 << 40) + 1)}"
    assert child != parent and re.fullmatch(r"x_[0-9a-hjkmnp-tv-z]{26}", child)
