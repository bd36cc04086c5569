"""`Each`: a background job's items fail alone, but the database failing is one error."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from escrow.persistence.db import Each, ItemsFailed


def test_an_item_that_fails_is_skipped_and_reported_once_the_others_are_done() -> None:
    each, done = Each("job"), []

    def work(item: str) -> str:
        if item in ("b", "d"):
            raise IntegrityError("INSERT", {}, Exception(item)) if item == "b" else RuntimeError(item)
        done.append(item)
        return item

    results = [each.run(item, lambda item=item: work(item)) for item in "abcde"]
    assert results == ["a", None, "c", None, "e"] and done == ["a", "c", "e"]
    with pytest.raises(ItemsFailed, match=r"job: 2 failed, first \['b', 'd'\]"):
        each.done()


def test_the_database_failing_is_raised_at_once_not_logged_per_item() -> None:
    each = Each("job")

    def lost() -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with pytest.raises(OperationalError):
        each.run("a", lost)
    each.done()  # nothing was counted as an item's own failure
