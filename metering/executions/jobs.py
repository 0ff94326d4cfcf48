"""Executions' background work: settling executions that went stale without a true end."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings
from metering.core.clock import from_ms, to_ms, utc_now
from metering.db import transaction
from metering.executions import repository as executions_repo
from metering.ingest import repository as ingest_repo
from metering.scheduling import JobEntry

SETTLE_BATCH = 5_000


def settle_stale(sessions: sessionmaker[Session], stale_after_s: int) -> int:
    """Settle executions that went stale without a true end (they ended at their newest
    event) into the hourly rollups. Safe on many workers: rows are claimed SKIP LOCKED."""
    now = from_ms(to_ms(utc_now()))
    total = 0
    while True:
        with transaction(sessions) as session:
            ingest_repo.refresh_liveness(session)
            settled = executions_repo.settle_stale(
                session, now, timedelta(seconds=stale_after_s), SETTLE_BATCH)
        total += len(settled)
        if len(settled) < SETTLE_BATCH:
            return total


def schedule(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    return [JobEntry("settle_stale", settings.fold_interval_s * 2,
                     lambda: settle_stale(sessions, settings.stale_after_s))]
