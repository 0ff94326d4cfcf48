"""Ingest's background work: the liveness refresh, the fold of pending samples into minute
rows, and the sample partitions made ahead; plain functions the scheduler (or a test) calls.

Each job runs in its own transactions and is safe to run on any number of workers at once:
the fold takes an exclusive advisory lock, and the liveness refresh is a monotonic update of
what it drained from its log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings
from metering.core.clock import utc_now
from metering.db import transaction
from metering.ingest import partitions, slices
from metering.ingest import repository as ingest_repo
from metering.ingest.service import FOLD_AGE
from metering.scheduling import VACUUM_EVERY, Every, JobEntry, vacuum

log = logging.getLogger(__name__)

FOLD_BATCH = 200_000


# An execution still sending samples has its `last_event_at` written once it moved this
# far; its figures do not depend on it (it is running), and the pass writes a tenth as much.
LIVENESS_STEP = timedelta(seconds=10)


def refresh_liveness(
    sessions: sessionmaker[Session], stale_after_s: int = 60,
    step: timedelta | None = None,
) -> int:
    """Drain the liveness log into `executions.last_event_at`, a bucket of executions and a
    chunk per transaction (each short, so ingest never waits long on the rows it locks).
    `step` None writes every newest time (exact); see `ingest_repo.refresh_liveness`.
    Answers executions written."""
    with transaction(sessions) as session:
        buckets = ingest_repo.liveness_buckets(session)
    written = 0
    for bucket in buckets:
        while True:
            with transaction(sessions) as session:
                done = ingest_repo.refresh_liveness(
                    session, utc_now(), timedelta(seconds=stale_after_s), step, bucket=bucket)
            written += done.written
            if done.drained < ingest_repo.LIVENESS_CHUNK:
                break
    return written


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
_liveness_vacuum = Every(VACUUM_EVERY)
# One pass at a time in this process: the scheduler's own and the settle's.
_liveness_pass = threading.Lock()


def refresh_liveness_paced(sessions: sessionmaker[Session], stale_after_s: int = 60) -> int | None:
    """The scheduler's liveness refresh, `LIVENESS_STEP` apart for executions still sending:
    skipped (None) while paced (see `Pacer`; the settle's passes count) or while the
    settle's pass runs (it drains the same log)."""
    if not _liveness_pass.acquire(blocking=False):
        return None
    try:
        if not _liveness_pacer.due():
            return None
        return _scheduled_pass(sessions, stale_after_s)
    finally:
        _liveness_pass.release()


def refresh_liveness_now(sessions: sessionmaker[Session], stale_after_s: int = 60) -> int:
    """A liveness pass now, after any pass of this process that is running: the settle's,
    which must see every newest sample logged before it starts. Paced passes count it."""
    with _liveness_pass:
        return _scheduled_pass(sessions, stale_after_s)


def _scheduled_pass(sessions: sessionmaker[Session], stale_after_s: int) -> int:
    started = time.monotonic()
    try:
        return refresh_liveness(sessions, stale_after_s, LIVENESS_STEP)
    finally:
        _liveness_pacer.ran(started)
        if _liveness_vacuum():
            # The running executions' rows are rewritten every few seconds (their newest
            # sample time, by this pass): vacuuming them here keeps the sweep's and the
            # reads' index scans short whatever autovacuum's schedule (only pages changed
            # since the last vacuum are visited: tens of milliseconds at 20,000 running).
            vacuum(sessions, "liveness_log", "executions")


# Minute slices of pending samples are made a minute past the farthest future an event may
# carry (`METERING_FUTURE_TOLERANCE_S`) and up to this much beyond it; samples outside them
# go to the default partition, which is folded row by row.
SLICES_BEYOND = timedelta(minutes=5)


# The scheduler folds a minute slice in this many parts (by a hash of the execution), this
# long apart, within one transaction: the fold's CPU comes as several short bursts instead of
# one of 1-2.5 s, which the event batches waited behind (see docs/scaling.md, "The fold of a
# minute slice in parts").
SLICE_FOLD_PARTS = 4
SLICE_FOLD_PAUSE_S = 1.0  # float-ok: seconds


def fold_samples(sessions: sessionmaker[Session], future_tolerance_s: int = 300,
                 parts: int = 1, pause: Callable[[], None] | None = None) -> int:
    """Fold pending samples older than three minutes into minute rows: each minute slice past
    the watermark whole (then dropped), then the default partition's samples past it. Never
    folds fresher samples: ingest relies on it. Makes the slices ahead first. (Liveness does
    not read the pending table: the fold loses no newest-event time, see
    `ingest_repo.log_liveness`.)

    The newest slice due is folded in `parts` statements (a power of two), `pause` called
    between them, all in the slice's one transaction: nothing outside sees a slice half
    folded, and a failure folds nothing of it.

    Samples of months before the retention horizon are discarded (counted and logged): their
    partition was dropped on purpose. They still served liveness before the fold."""
    now = utc_now()
    watermark = now.replace(second=0, microsecond=0) - FOLD_AGE
    with transaction(sessions) as session:
        lead = timedelta(seconds=future_tolerance_s)
        slices.ensure_ahead(session, now, lead, lead + SLICES_BEYOND)
        due = slices.due(session, watermark)
    moved_total = discarded_total = 0
    for index, start in enumerate(due):
        # Behind (after a pause of the service), the older slices are folded whole and
        # without pauses, so the fold catches up within one run.
        spread = parts if index == len(due) - 1 else 1
        with transaction(sessions) as session:
            ingest_repo.lock_fold(session)
            slices.lock_for_fold(session, start)
            for part in range(spread):
                if part and pause is not None:
                    pause()
                batch = _fold_batch(session, watermark, start, part, spread)
                moved_total += batch.moved
                discarded_total += batch.discarded
            slices.drop_or_empty(session, start)
    while True:
        with transaction(sessions) as session:
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


def _pause_between_parts() -> None:
    time.sleep(SLICE_FOLD_PAUSE_S)


def _fold_batch(
    session: Session, watermark: datetime, slice_start: datetime | None = None,
    part: int = 0, parts: int = 1,
) -> ingest_repo.FoldBatch:
    """One batch under the fold lock (a part of a slice, or from the default partition),
    making the partitions it needs first. The hot path is one statement: the months known to
    have a partition are a process-wide memory, and the statement answers the months it lacks
    instead of failing on them."""
    if slice_start is None:  # a slice's caller holds it already, and the slice's lock
        ingest_repo.lock_fold(session)
    kept_from = partitions.kept_from(session)
    months = set(partitions.known_partitions.months(session))
    for _ in range(4):  # at worst: stale memory, then missing months, then the batch
        if slice_start is None:
            batch = ingest_repo.fold(session, watermark, FOLD_BATCH, kept_from=kept_from,
                                     partitions=partitions.as_multirange(months))
        else:
            batch = ingest_repo.fold_slice(session, slice_start, kept_from=kept_from,
                                           months=months, part=part, parts=parts)
        if batch.partitions_stale:  # dropped by someone else: ask the catalog again
            partitions.known_partitions.forget()
            months = set(partitions.attached_months(session))
        elif batch.missing:
            months |= partitions.ensure_partitions(session, batch.missing)
        else:
            return batch
    raise RuntimeError("the fold still lacks sample partitions after making them")


def maintain_sample_partitions(sessions: sessionmaker[Session]) -> list[datetime]:
    """Make the current and the next month's sample partitions ahead of need."""
    made = partitions.precreate(sessions, utc_now())
    if made:
        log.info("sample partitions made ahead", extra={
            "months": [m.strftime("%Y-%m") for m in made]})
    return made


def schedule(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    return [
        # A pass every fold interval (5 s), taking turns with the settle's (`settle_stale`,
        # every other interval): a pass reads each running execution once whatever it
        # drains, so two passes at each of the settle's beats cost half as much again (the
        # log's drain was a quarter of the database's time in a soak at 22,000-31,000
        # events/s), and 5 s is well inside the staleness window the pass serves.
        JobEntry("refresh_liveness", settings.fold_interval_s * 2,
                 lambda: refresh_liveness_paced(sessions, settings.stale_after_s),
                 offset_s=settings.fold_interval_s),
        JobEntry("fold_samples", settings.fold_interval_s * 6,
                 lambda: fold_samples(sessions, settings.future_tolerance_s,
                                      SLICE_FOLD_PARTS, _pause_between_parts)),
        JobEntry("sample_partitions", 3600.0, lambda: maintain_sample_partitions(sessions)),
    ]
