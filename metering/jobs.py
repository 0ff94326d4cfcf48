"""Metering's background work, as plain functions the scheduler (or a test) calls.

Each job runs in its own transaction and is safe to run on any number of workers at once:
the fold takes an exclusive advisory lock, and the liveness refresh is a monotonic upsert.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from metering import retention
from metering.core.clock import from_ms, to_ms, utc_now
from metering.db import transaction
from metering.executions import repository as executions_repo
from metering.ingest import repository as ingest_repo
from metering.ingest.service import FOLD_AGE

log = logging.getLogger(__name__)

FOLD_BATCH = 200_000


def refresh_liveness(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as session:
        return ingest_repo.refresh_liveness(session)


class Pacer:
    """Holds a periodic job back while the time since its last run is short next to how long
    that run took, so a job whose cost grows with the data (the liveness pass reads every
    pending sample) takes at most `duty` of the time instead of all of it: on a big fleet
    the refresh comes less often (still well inside the staleness window), never piles up.
    """

    def __init__(self, duty: float) -> None:  # float-ok: a fraction of time
        self._duty = duty
        self._ended = float("-inf")  # float-ok: monotonic seconds
        self._took = 0.0  # float-ok: seconds

    def due(self) -> bool:
        rest = self._took * (1 / self._duty - 1)
        return time.monotonic() - self._ended >= rest

    def ran(self, started: float) -> None:  # float-ok: monotonic seconds
        self._ended = time.monotonic()
        self._took = self._ended - started


_liveness_pacer = Pacer(duty=0.25)


def refresh_liveness_paced(sessions: sessionmaker[Session]) -> int | None:
    """The scheduler's liveness refresh: skipped (None) while paced, see `Pacer`."""
    if not _liveness_pacer.due():
        return None
    started = time.monotonic()
    try:
        return refresh_liveness(sessions)
    finally:
        _liveness_pacer.ran(started)


def fold_samples(sessions: sessionmaker[Session]) -> int:
    """Fold pending samples older than three minutes into minute rows, refreshing liveness
    first so no newest-event time is lost. Never folds fresher samples: ingest relies on it.

    Samples of months before the retention horizon are discarded (counted and logged): their
    partition was dropped on purpose. They still served liveness before the fold."""
    watermark = utc_now().replace(second=0, microsecond=0) - FOLD_AGE
    moved_total = discarded_total = 0
    while True:
        with transaction(sessions) as session:
            ingest_repo.refresh_liveness(session)
            batch = _fold_batch(session, watermark)
        moved_total += batch.moved
        discarded_total += batch.discarded
        if batch.moved < FOLD_BATCH:
            break
    if moved_total:
        log.info("folded samples", extra={"samples": moved_total})
    if discarded_total:
        log.warning("discarded samples of months past sample retention",
                    extra={"samples": discarded_total})
    return moved_total


def _fold_batch(session: Session, watermark: datetime) -> ingest_repo.FoldBatch:
    """One batch under the fold lock, making the partitions it needs first. The hot path is
    one statement: the months known to have a partition are a process-wide memory, and the
    statement answers the months it lacks instead of failing on them."""
    ingest_repo.lock_fold(session)
    kept_from = retention.kept_from(session)
    months = set(retention.known_partitions.months(session))
    for _ in range(4):  # at worst: stale memory, then missing months, then the batch
        batch = ingest_repo.fold(session, watermark, FOLD_BATCH, kept_from=kept_from,
                                 partitions=retention.as_multirange(months))
        if batch.partitions_stale:  # dropped by someone else: ask the catalog again
            retention.known_partitions.forget()
            months = set(retention.attached_months(session))
        elif batch.missing:
            months |= retention.ensure_partitions(session, batch.missing)
        else:
            return batch
    raise RuntimeError("the fold still lacks sample partitions after making them")


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


def purge_leases(sessions: sessionmaker[Session]) -> int:
    """Forget leases that expired more than a day ago (they no longer hold anything)."""
    from metering.admissions import repository as admissions_repo

    with transaction(sessions) as session:
        return admissions_repo.purge(session, utc_now() - timedelta(days=1))


def maintain_sample_partitions(sessions: sessionmaker[Session]) -> list[datetime]:
    """Make the current and the next month's sample partitions ahead of need."""
    made = retention.precreate(sessions, utc_now())
    if made:
        log.info("sample partitions made ahead", extra={
            "months": [m.strftime("%Y-%m") for m in made]})
    return made
