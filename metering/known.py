"""A process-local memory of ids known to exist in the database (teams, executions).

Rows of these tables are never deleted while the process runs, so once a commit made them
exist, ingest need not ask again: it checks dozens of ids per batch, tens of times a second.
Ids are remembered only after the transaction that ensured them commits.
"""

from __future__ import annotations

import time
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


class KnownOwners:
    """Execution id -> the team it belongs to, for ids whose row is committed. An execution's
    team never changes, so the memory never goes stale."""

    def __init__(self, limit: int = 500_000) -> None:
        self._owner: dict[str, str] = {}
        self._limit = limit

    def owner(self, execution_id: str) -> str | None:
        return self._owner.get(execution_id)

    def remember_after_commit(self, session: Session, owners: dict[str, str]) -> None:
        if not owners:
            return
        pending = dict(owners)

        @event.listens_for(session, "after_commit", once=True)
        def remember(_: Session) -> None:
            if len(self._owner) > self._limit:
                self._owner.clear()
            self._owner.update(pending)

    def clear(self) -> None:
        self._owner.clear()


class Expiring:
    """Ids remembered for a while (a hint that may go stale, never a fact)."""

    def __init__(self, seconds: float, limit: int = 100_000) -> None:  # float-ok: seconds
        self._until: dict[str, float] = {}  # float-ok: monotonic seconds
        self._seconds = seconds
        self._limit = limit

    def __contains__(self, key: str) -> bool:
        return self._until.get(key, 0.0) > time.monotonic()

    def add(self, key: str) -> None:
        if len(self._until) > self._limit:
            self._until.clear()
        self._until[key] = time.monotonic() + self._seconds

    def clear(self) -> None:
        self._until.clear()


teams = KnownIds()
executions = KnownIds()
execution_owners = KnownOwners()
# Teams whose admissions billing cannot answer from the prefetched team row (credit-enforced
# plans, spend limits): they skip the event loop's attempt for a while (plans change rarely).
threaded_admissions = Expiring(10.0)


def forget_all() -> None:
    """Tests that wipe the database call this."""
    teams.clear()
    executions.clear()
    execution_owners.clear()
    threaded_admissions.clear()
