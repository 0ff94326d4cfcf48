"""Minute slices of `host_stats_pending`: pending samples leave whole, never row by row.

`host_stats_pending` is partitioned by `time`, one partition per UTC minute named
`host_stats_pending_pYYYYMMDDHHMM`, plus a default partition, `host_stats_pending_default`,
for any sample outside every slice (a late one, or one that came before its slice was made).
The fold moves a slice whose minute is past its watermark into `sample_minutes` with one
INSERT … SELECT, then drops it (or empties it with TRUNCATE when the drop would wait): what a
minute of samples costs the fold is in proportion to that minute, and no dead rows are left
for VACUUM. Only the default partition is folded with DELETE, and it holds little.

Slices are made ahead (`ensure_ahead`, by the fold every run), only for minutes past the
farthest future an event may carry: no insert can be routing a row into a minute while its
slice is attached. Each is made as a standalone table and attached (the parent locked SHARE
UPDATE EXCLUSIVE: ingest goes on); attaching scans the default partition for rows of that
minute, and a minute the default already holds rows of is left to it. So after a start, the
first minutes' samples are in the default partition.

Locks, so that any number of API processes and workers can run:
- `SLICE_LOCK` (transaction advisory lock) serialises making and dropping slices;
- the fold holds the fold lock (`metering.ingest.repository.FOLD_LOCK`) and locks the slice
  SHARE before reading it: a transaction still writing into the slice (one that began long
  ago) finishes first, and none starts, so nothing is emptied unread;
- a drop locks the parent ACCESS EXCLUSIVE: it waits at most `DROP_LOCK_TIMEOUT`, else the
  slice is emptied with TRUNCATE (its own lock only) and dropped by a later fold.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

PARENT = "host_stats_pending"
DEFAULT = "host_stats_pending_default"
SLICE = timedelta(minutes=1)
SLICE_LOCK = 0x6D736C63  # "mslc"; pg_advisory_xact_lock key, unique in this service
# A drop queues every insert behind it while it waits: never longer than this.
DROP_LOCK_TIMEOUT = "200ms"
_NAME = re.compile(r"^host_stats_pending_p(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})$")
CHECK_VIOLATION = "23514"


def slice_name(start: datetime) -> str:
    return f"{PARENT}_p{start.astimezone(UTC):%Y%m%d%H%M}"


def slice_start(name: str) -> datetime | None:
    """The minute a slice's name stands for, or None for any other table."""
    found = _NAME.match(name)
    if found is None:
        return None
    year, month, day, hour, minute = (int(g) for g in found.groups())
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def is_pending_partition(name: str) -> bool:
    """For schema comparisons: slices are made by the service, the default by a migration."""
    return name == DEFAULT or slice_start(name) is not None


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


_ATTACHED = text("""
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass('host_stats_pending')
""")


def attached(session: Session) -> list[datetime]:
    """Minutes that have a slice attached, oldest first."""
    starts = (slice_start(str(r[0])) for r in session.execute(_ATTACHED))
    return sorted(s for s in starts if s is not None)


def _lock(session: Session) -> None:
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SLICE_LOCK})


def ensure(session: Session, starts: Iterable[datetime]) -> list[datetime]:
    """Make the slices of these minutes that are missing; answer the ones made. A minute the
    default partition holds rows of stays with it (attaching would fail)."""
    wanted = sorted({minute_floor(s) for s in starts})
    if not wanted:
        return []
    _lock(session)
    have = set(attached(session))
    made: list[datetime] = []
    for start in wanted:
        if start in have:
            continue
        name = slice_name(start)
        savepoint = session.begin_nested()
        try:
            session.execute(text(f'CREATE TABLE IF NOT EXISTS "{name}" (LIKE {PARENT})'))
            session.execute(text(
                f'ALTER TABLE {PARENT} ATTACH PARTITION "{name}" FOR VALUES '
                f"FROM ('{start.isoformat()}') TO ('{(start + SLICE).isoformat()}')"))
        except DBAPIError as exc:
            savepoint.rollback()
            if getattr(exc.orig, "sqlstate", None) != CHECK_VIOLATION:
                raise
            continue
        savepoint.commit()
        made.append(start)
    return made


def ensure_ahead(session: Session, now: datetime, lead: timedelta,
                 ahead: timedelta) -> list[datetime]:
    """Slices of the minutes from `lead` after now to `ahead` after it. `lead` is past the
    farthest future an event may carry: a slice is attached only while no insert can route a
    row into its minute (an insert that routed one to the default partition just before would
    fail the default's new constraint)."""
    first = minute_floor(now + lead) + SLICE
    count = int((ahead - lead) / SLICE)
    return ensure(session, (first + i * SLICE for i in range(count)))


def due(session: Session, watermark: datetime) -> list[datetime]:
    """Slices wholly before the watermark, oldest first: ready to fold."""
    return [s for s in attached(session) if s + SLICE <= watermark]


def lock_for_fold(session: Session, start: datetime) -> None:
    """No transaction writes into the slice from here on (late writers finish first)."""
    session.execute(text(f'LOCK TABLE "{slice_name(start)}" IN SHARE MODE'))


def drop_or_empty(session: Session, start: datetime) -> bool:
    """After its samples were folded in this transaction: drop the slice if the parent's lock
    comes within `DROP_LOCK_TIMEOUT`, else empty it (dropped by a later fold). True if
    dropped."""
    name = slice_name(start)
    savepoint = session.begin_nested()
    try:
        session.execute(text("SELECT set_config('lock_timeout', :t, true)"),
                        {"t": DROP_LOCK_TIMEOUT})
        _lock(session)
        session.execute(text(f'DROP TABLE "{name}"'))
        session.execute(text("SET LOCAL lock_timeout = 0"))
    except DBAPIError as exc:
        savepoint.rollback()
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        session.execute(text("SET LOCAL lock_timeout = 0"))
        session.execute(text(f'TRUNCATE "{name}"'))
        return False
    savepoint.commit()
    return True
