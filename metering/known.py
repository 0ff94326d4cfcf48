"""A process-local memory of ids known to exist in the database (teams, executions).

Rows of these tables are never deleted while the process runs, so once a commit made them
exist, ingest need not ask again: it checks dozens of ids per batch, tens of times a second.
Ids are remembered only after the transaction that ensured them commits.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import event
from sqlalchemy.orm import Session


class KnownIds:
    def __init__(self, limit: int = 500_000) -> None:
        self._known: set[str] = set()
        self._limit = limit

    def unknown(self, ids: Iterable[str]) -> list[str]:
        return sorted({i for i in ids if i not in self._known})

    def remember_after_commit(self, session: Session, ids: Iterable[str]) -> None:
        pending = set(ids)
        if not pending:
            return

        @event.listens_for(session, "after_commit", once=True)
        def remember(_: Session) -> None:
            if len(self._known) > self._limit:
                self._known.clear()
            self._known.update(pending)

    def clear(self) -> None:
        self._known.clear()


teams = KnownIds()
executions = KnownIds()


def forget_all() -> None:
    """Tests that wipe the database call this."""
    teams.clear()
    executions.clear()
