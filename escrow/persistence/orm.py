"""ORM mappings for reading journal entries and postings, which refuse change.

The hot path never uses the ORM; reports and admin tools may. Mapping the append-only
tables here with guards means an ORM user cannot even flush an UPDATE or DELETE of a
posted entry: it fails in the session, before the database trigger would refuse it too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Mapper, registry

from escrow.errors import IllegalTransition
from escrow.persistence.tables import journal_entries, postings

mapper_registry = registry()


class JournalEntryRecord:
    id: str
    kind: str


class PostingRecord:
    id: int
    entry_id: str
    account: str
    currency: str
    amount: int


mapper_registry.map_imperatively(JournalEntryRecord, journal_entries)
mapper_registry.map_imperatively(PostingRecord, postings)


class AppendOnlyViolation(IllegalTransition):
    code = "append_only"
    title = "Ledger records cannot be changed"


def _refuse(operation: str) -> Any:
    def listener(_mapper: Mapper[Any], _conn: Any, target: Any) -> None:
        raise AppendOnlyViolation(
            f"{type(target).__name__} is append-only: {operation} refused; post a reversing entry instead"
        )

    return listener


for _cls in (JournalEntryRecord, PostingRecord):
    event.listen(_cls, "before_update", _refuse("update"))
    event.listen(_cls, "before_delete", _refuse("delete"))
