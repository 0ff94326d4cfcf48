"""What a feature hands the worker: its periodic jobs, each with its interval.

Every feature that has background work declares it in its own `jobs.py` as a `schedule()`
function answering `JobEntry` rows; the worker only collects them. Every job must be safe
with any number of workers running it at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker


class JobEntry(NamedTuple):
    name: str
    interval_s: float  # float-ok: a schedule, not money
    run: Callable[[], object]
    # On the orchestrator's path (kill orders and their delivery): runs at the process's own
    # CPU priority. Every other job runs at a lower one (`Settings.jobs_nice`), so when the
    # machine is saturated the jobs slow down before ingest and admissions do.
    orchestrator: bool = False
    # The first run comes this long after the first interval: two jobs of one interval that
    # share work (the liveness pass: its own job and the settle's) take turns, evenly apart.
    offset_s: float = 0.0  # float-ok: a schedule


# Tables emptied by DELETE every few seconds (the liveness log, the rollup deltas) are
# vacuumed by their own job every this many runs, so they stay a few pages long without
# relying on autovacuum's schedule.
VACUUM_EVERY = 20


class Every:
    """True once every `n` calls (per process)."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._calls = 0

    def __call__(self) -> bool:
        self._calls += 1
        return self._calls % self._n == 0


def vacuum(sessions: sessionmaker[Session], *tables: str) -> None:
    """VACUUM small, constantly emptied tables (outside a transaction, as VACUUM must be);
    a table another worker is vacuuming is skipped."""
    engine = sessions.kw["bind"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f"VACUUM (SKIP_LOCKED) {table}"))
