"""Executions' background work: settling executions that went stale without a true end, and
folding the settled-usage deltas into the hourly rollups."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings
from metering.core.clock import from_ms, to_ms, utc_now
from metering.db import transaction
from metering.executions import repository as executions_repo
from metering.ingest import jobs as ingest_jobs
from metering.scheduling import VACUUM_EVERY, Every, JobEntry, vacuum

SETTLE_BATCH = 5_000


def settle_stale(sessions: sessionmaker[Session], stale_after_s: int) -> int:
    """Settle executions that went stale without a true end (they ended at their newest
    event) into the hourly rollups. Safe on many workers: rows are claimed SKIP LOCKED.

    The liveness log is drained first: every execution near going stale then has its exact
    newest event (see `metering.ingest.repository.refresh_liveness`), the end it settles at."""
    ingest_jobs.refresh_liveness_now(sessions, stale_after_s)
    now = from_ms(to_ms(utc_now()))
    total = 0
    while True:
        with transaction(sessions) as session:
            settled = executions_repo.settle_stale(
                session, now, timedelta(seconds=stale_after_s), SETTLE_BATCH)
        total += len(settled)
        if len(settled) < SETTLE_BATCH:
            return total


_rollups_vacuum = Every(VACUUM_EVERY)


def fold_rollup_deltas(sessions: sessionmaker[Session]) -> int:
    """Fold the settled-usage deltas appended by ingest and settles into the hourly rollups
    (reads add the ones not folded yet, so this changes no figure, only its cost)."""
    with transaction(sessions) as session:
        folded = executions_repo.fold_rollup_deltas(session)
    if _rollups_vacuum():
        vacuum(sessions, "usage_rollup_deltas")
    return folded


def schedule(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    return [JobEntry("settle_stale", settings.fold_interval_s * 2,
                     lambda: settle_stale(sessions, settings.stale_after_s)),
            JobEntry("fold_rollup_deltas", settings.fold_interval_s,
                     lambda: fold_rollup_deltas(sessions))]
