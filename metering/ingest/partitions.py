"""Monthly partitions of `sample_minutes` and the retention horizon of samples.

`sample_minutes` is partitioned by UTC calendar month of `minute`, one partition per month
named `sample_minutes_pYYYY_MM`. Partitions come from three places: the migration (every
month that held rows, the current and the next one), `precreate` (a job: the current and the
next month, ahead of need) and the fold, which makes the month of any sample it is about to
store on demand: samples may arrive months late. A partition is made as a standalone table and
then attached, which locks the parent SHARE UPDATE EXCLUSIVE (reads and writes go on) where
`CREATE TABLE ... PARTITION OF` would lock it ACCESS EXCLUSIVE.

Old months leave whole: `advance_horizon` (called by billing's retention job, which decides
which months may go) drops their partitions and records the horizon, the first month still
kept, in `sample_retention`. From then on the fold discards samples of earlier months instead
of making their partition again. Billing never reads samples, so nothing billed depends on
them; they serve per-minute metrics and deduplication of late samples.

Who locks what, so that any number of API processes and workers can run:

- `PARTITION_LOCK` (transaction advisory lock) serialises every partition made or dropped,
  so two processes never make the same month at once, and a month is never made while the
  horizon moves past it;
- the fold holds the fold lock (`metering.ingest.repository.FOLD_LOCK`) exclusively from
  reading the horizon to storing its rows, and `advance_horizon` takes it too: a fold never
  writes into a month whose partition is being dropped. Order: fold lock, then partition lock.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

from metering.core.clock import month_start, next_month_start
from metering.db import transaction
from metering.ingest import slices
from metering.ingest.repository import lock_fold

log = logging.getLogger(__name__)

PARENT = "sample_minutes"
PARTITION_LOCK = 0x6D706172  # "mpar"; pg_advisory_xact_lock key, unique in this service
# Dropping a partition locks the parent ACCESS EXCLUSIVE: wait at most this long for readers
# (then fail, and the hourly job tries again) rather than queue every metrics read behind it.
DROP_LOCK_TIMEOUT = "5s"
_PARTITION_NAME = re.compile(r"^sample_minutes_p(\d{4})_(\d{2})$")


def partition_name(month: datetime) -> str:
    month = month_start(month)
    return f"{PARENT}_p{month.year:04d}_{month.month:02d}"


def partition_month(name: str) -> datetime | None:
    """The month a partition's name stands for, or None for any other table."""
    found = _PARTITION_NAME.match(name)
    if found is None:
        return None
    return datetime(int(found[1]), int(found[2]), 1, tzinfo=UTC)


def is_sample_partition(name: str) -> bool:
    """For schema comparisons: partitions are made by the service, not by the models."""
    return partition_month(name) is not None


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's `include_name` hook: partitions belong to the service, not to the models,
    so schema comparisons (autogenerate, the migration test) leave them out."""
    return not (type_ == "table" and name is not None
                and (is_sample_partition(name) or slices.is_pending_partition(name)))


def add_months(month: datetime, count: int) -> datetime:
    """The first instant of the month `count` months after (or before) `month`'s."""
    index = month.year * 12 + month.month - 1 + count
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def as_multirange(months: Iterable[datetime]) -> str:
    """`tstzmultirange` text covering the given months (adjacent months merge)."""
    ranges = [f'["{m.isoformat()}","{next_month_start(m).isoformat()}")'
              for m in sorted(months)]
    return "{" + ",".join(ranges) + "}"


# --- reads ----------------------------------------------------------------------------------

_ATTACHED = text("""
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass('sample_minutes')
""")

_KEPT_FROM = text("SELECT kept_from FROM sample_retention WHERE id = 1")

_SIZES = text("""
SELECT c.relname, pg_total_relation_size(c.oid)
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass('sample_minutes')
""")


def attached_months(session: Session) -> list[datetime]:
    """Months that have a partition attached, oldest first (from the catalog)."""
    months = (partition_month(str(r[0])) for r in session.execute(_ATTACHED))
    return sorted(m for m in months if m is not None)


def partition_bytes(session: Session) -> dict[datetime, int]:
    """Size of each month's partition with its index."""
    out: dict[datetime, int] = {}
    for name, size in session.execute(_SIZES):
        month = partition_month(str(name))
        if month is not None:
            out[month] = int(size)
    return out


def kept_from(session: Session) -> datetime | None:
    """The first month whose samples are kept; None until the retention job first ran."""
    value = session.execute(_KEPT_FROM).scalar_one_or_none()
    return None if value is None else month_start(value)


# --- the process's memory of existing partitions ---------------------------------------------


class KnownPartitions:
    """Months known to have a partition, read from the catalog once per process, then grown by
    what this process makes (after its commit). The fold asks for every batch; a stale entry
    (a partition dropped by another process) costs one retry: the fold only stores rows of
    months after the horizon, and reloads this memory if PostgreSQL still finds no partition.
    """

    def __init__(self) -> None:
        self._months: frozenset[datetime] | None = None
        self._lock = threading.Lock()

    def months(self, session: Session) -> frozenset[datetime]:
        known = self._months
        if known is None:
            known = frozenset(attached_months(session))
            with self._lock:
                self._months = known if self._months is None else self._months | known
        return known

    def remember_after_commit(self, session: Session, months: Iterable[datetime]) -> None:
        made = frozenset(months)
        if not made:
            return

        @event.listens_for(session, "after_commit", once=True)
        def remember(_: Session) -> None:
            with self._lock:
                if self._months is not None:
                    self._months |= made

    def forget_after_commit(self, session: Session) -> None:
        @event.listens_for(session, "after_commit", once=True)
        def forget(_: Session) -> None:
            self.forget()

    def forget(self) -> None:
        with self._lock:
            self._months = None


known_partitions = KnownPartitions()


# --- making partitions ------------------------------------------------------------------------


def _lock_partitions(session: Session) -> None:
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PARTITION_LOCK})


def ensure_partitions(session: Session, months: Iterable[datetime]) -> frozenset[datetime]:
    """Make the partitions of `months` that do not exist, in the caller's transaction; answer
    the months that now have one. Months before the retention horizon are never made again.

    Safe with any number of processes at once: they serialise on `PARTITION_LOCK` and the
    later one finds the partition attached."""
    wanted = sorted({month_start(m) for m in months})
    if not wanted:
        return frozenset()
    _lock_partitions(session)
    horizon = kept_from(session)
    attached = set(attached_months(session))
    ready: set[datetime] = set()
    made: list[str] = []
    for month in wanted:
        if horizon is not None and month < horizon:
            continue
        if month not in attached:
            name = partition_name(month)
            session.execute(text(f'CREATE TABLE IF NOT EXISTS "{name}" (LIKE {PARENT})'))
            session.execute(text(
                f'ALTER TABLE {PARENT} ATTACH PARTITION "{name}" FOR VALUES '
                f"FROM ('{month.isoformat()}') TO ('{next_month_start(month).isoformat()}')"))
            made.append(name)
        ready.add(month)
    if made:
        log.info("sample partitions made", extra={"partitions": made})
    known_partitions.remember_after_commit(session, ready)
    return frozenset(ready)


def precreate(sessions: sessionmaker[Session], now: datetime) -> list[datetime]:
    """The job: the current and the next month have their partition before any sample needs
    it (the fold would make them anyway, at the cost of one retried batch)."""
    wanted = [month_start(now), next_month_start(now)]
    with transaction(sessions) as session:
        if set(wanted) <= known_partitions.months(session):
            return []
        before = set(attached_months(session))
        ready = ensure_partitions(session, wanted)
    return sorted(ready - before)


# --- dropping old months ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HorizonMove:
    """What `advance_horizon` did."""

    kept_from_before: datetime | None
    kept_from: datetime | None
    dropped: tuple[datetime, ...]
    bytes_freed: int


_SET_HORIZON = text("""
INSERT INTO sample_retention (id, kept_from, updated_at) VALUES (1, :kept_from, :now)
ON CONFLICT (id) DO UPDATE SET kept_from = excluded.kept_from, updated_at = excluded.updated_at
""")


def advance_horizon(
    session: Session, kept_from_wanted: datetime, drop: Sequence[datetime], now: datetime,
) -> HorizonMove:
    """Move the horizon up to `kept_from_wanted` and drop the partitions of `drop` (months
    before it), in the caller's transaction. The caller vouches that every month before the
    horizon may go; a partition it did not know about (made since it looked) holds the
    horizon at that month. The horizon never moves back.

    Takes the fold lock, then the partition lock: no fold is storing rows meanwhile, and after
    the commit every fold reads the new horizon."""
    lock_fold(session)
    _lock_partitions(session)
    before = kept_from(session)
    attached = attached_months(session)
    target = month_start(kept_from_wanted)
    allowed = {month_start(m) for m in drop}
    unknown = [m for m in attached if m < target and m not in allowed]
    if unknown:
        target = min(unknown)
    if before is not None and before >= target:
        target = before
    doomed = [m for m in attached if m in allowed and m < target]
    sizes = partition_bytes(session) if doomed else {}
    if doomed:
        session.execute(text("SELECT set_config('lock_timeout', :t, true)"),
                        {"t": DROP_LOCK_TIMEOUT})
        for month in doomed:
            session.execute(text(f'DROP TABLE "{partition_name(month)}"'))
        known_partitions.forget_after_commit(session)
    if before is None or target > before:
        session.execute(_SET_HORIZON, {"kept_from": target, "now": now})
    elif not doomed:
        return HorizonMove(before, before, (), 0)
    return HorizonMove(before, target, tuple(doomed), sum(sizes.get(m, 0) for m in doomed))
