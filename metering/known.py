"""A process-local memory of ids known to exist in the database (teams, executions).

Rows of these tables are never deleted while the process runs, so once a commit made them
exist, ingest need not ask again: it checks dozens of ids per batch, tens of times a second.
Ids are remembered only after the transaction that ensured them commits.

The memory is bounded and keeps what is in use: it holds two generations of ids, each
started when the one before it ended, and ended when it holds `generation` ids or is
`GENERATION_S` old, whichever comes first; an id found in the older one moves to the newer,
and when a new generation starts the older is dropped whole. Ids still in use (a running
sandbox's execution, sending samples every second) are always moved forward, so only ids
nobody asked about for a whole generation are forgotten, and forgetting one costs only a
question to the database. A process's memory therefore stays flat however long it runs, at
the size of what it used in the last two generations: what is running, plus a minute or two
of what ended.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from sqlalchemy import event
from sqlalchemy.orm import Session

# Large enough for every running execution a process sees, with room to spare: each ingest
# helper sees the whole fleet within seconds (a batch goes to whichever helper is free), and
# once the fleet outgrows one generation, ids dropped with the older one come back as misses
# every second (`bench.known_ids`: 1.5 % of a helper's lookups at 34,000 running with
# 32,768 a generation, 8.9 % at 40,000, 15.4 % at 45,000). Each miss asks the database about
# its execution again, so the cost per event rose with the fleet past 32,768. Two
# generations of 65,536 ids cost at most ~13 MiB a process (measured). Past it, a batch
# naming forgotten executions asks the database about them in one statement, as for new
# ones: slower, never wrong.
GENERATION = 65_536
# A generation also ends after this long, so that ended executions are forgotten within two
# minutes whatever the size: a fleet far below `GENERATION` would otherwise keep every
# execution that ended until a generation fills (+12 to +14 % of a helper's memory over a
# 30-minute soak at 27,200 running, measured). A running execution is asked about every few
# seconds, far more often than once a generation.
GENERATION_S = 60.0  # float-ok: seconds


class _Generations:
    """id -> value, bounded to two generations (see the module's docstring)."""

    def __init__(self, generation: int, seconds: float = GENERATION_S,  # float-ok: seconds
                 clock: Callable[[], float] = time.monotonic) -> None:  # float-ok: seconds
        self._new: dict[str, str] = {}
        self._old: dict[str, str] = {}
        self._generation = generation
        self._seconds = seconds
        self._clock = clock
        self._started = clock()

    def get(self, key: str) -> str | None:
        value = self._new.get(key)
        if value is None:
            value = self._old.pop(key, None)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: str, value: str) -> None:
        # Held once: an id remembered again (another batch ensured it too) leaves the older.
        self._old.pop(key, None)
        if key not in self._new:
            now = self._clock()
            if len(self._new) >= self._generation or now - self._started >= self._seconds:
                self._old = self._new
                self._new = {}
                self._started = now
        self._new[key] = value

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def clear(self) -> None:
        self._new = {}
        self._old = {}


class KnownIds:
    def __init__(self, generation: int = GENERATION, seconds: float = GENERATION_S,  # float-ok
                 clock: Callable[[], float] = time.monotonic) -> None:  # float-ok: seconds
        self._known = _Generations(generation, seconds, clock)

    def unknown(self, ids: Iterable[str]) -> list[str]:
        return sorted({i for i in ids if self._known.get(i) is None})

    def remember_after_commit(self, session: Session, ids: Iterable[str]) -> None:
        pending = set(ids)
        if not pending:
            return

        @event.listens_for(session, "after_commit", once=True)
        def remember(_: Session) -> None:
            self.remember(pending)

    def remember(self, ids: Iterable[str]) -> None:
        """Ids whose rows are committed (`remember_after_commit` calls it at the commit)."""
        for i in ids:
            self._known.put(i, i)

    def __len__(self) -> int:
        return len(self._known)

    def clear(self) -> None:
        self._known.clear()


class KnownOwners:
    """Execution id -> the team it belongs to, for ids whose row is committed. An execution's
    team never changes, so the memory never goes stale."""

    def __init__(self, generation: int = GENERATION, seconds: float = GENERATION_S,  # float-ok
                 clock: Callable[[], float] = time.monotonic) -> None:  # float-ok: seconds
        self._owner = _Generations(generation, seconds, clock)

    def owner(self, execution_id: str) -> str | None:
        return self._owner.get(execution_id)

    def remember_after_commit(self, session: Session, owners: dict[str, str]) -> None:
        if not owners:
            return
        pending = dict(owners)

        @event.listens_for(session, "after_commit", once=True)
        def remember(_: Session) -> None:
            self.remember(pending)

    def remember(self, owners: dict[str, str]) -> None:
        """Owners of committed executions (`remember_after_commit` calls it at the commit)."""
        for execution_id, team_id in owners.items():
            self._owner.put(execution_id, team_id)

    def __len__(self) -> int:
        return len(self._owner)

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


# Teams never end, and an API process learns them only from admissions: a team that starts
# nothing for a few minutes keeps its admissions' fast path (`admit_on_loop`), so teams are
# forgotten only by number (a few hundred in a fleet, far from a generation).
teams = KnownIds(seconds=math.inf)
execution_owners = KnownOwners()
# Teams whose admissions billing cannot answer from the prefetched team row (credit-enforced
# plans, spend limits): they skip the event loop's attempt for a while (plans change rarely).
threaded_admissions = Expiring(10.0)


def forget_all() -> None:
    """Tests that wipe the database call this."""
    teams.clear()
    execution_owners.clear()
    threaded_admissions.clear()
