"""Every query of admissions: the key, the per-team lock, counts, and leases.

The start path runs on the session's psycopg connection in pipeline mode, so its statements
are written in the driver's paramstyle (`%(name)s`): all reads travel in one round trip, the
lease and the commit in a second. Each is prepared on the server after a few uses on the
connection (`metering.db.prepare_in_pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy import text
from sqlalchemy.orm import Session

from metering import db_async
from metering.db import driver, prepare_in_pipeline
from metering.db_async import pipelined as pipelined_async
from metering.plugins import Prefetch, TeamRead
from metering.usage import running

_KEY = "SELECT role, revoked_at FROM api_keys WHERE digest = %(digest)s"

# The team's lock is taken only for a key allowed to admit, so a stranger cannot hold it.
_LOCK = """
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0)) FROM api_keys
WHERE digest = %(digest)s AND revoked_at IS NULL AND role IN ('ingest', 'admin')
"""

_LIVE_LEASE = """
SELECT id, max_duration_s, expires_at FROM leases
WHERE sandbox_id = %(sandbox_id)s AND team_id = %(team_id)s AND consumed_at IS NULL
  AND expires_at > %(now)s
ORDER BY created_at DESC LIMIT 1
"""

_COUNTS = f"""
SELECT
  (SELECT count(*) FROM executions e
   WHERE e.team_id = %(team_id)s AND e.start_at IS NOT NULL
     AND {running(now="%(now)s", stale="%(stale)s")}),
  (SELECT count(*) FROM leases l
   WHERE l.team_id = %(team_id)s AND l.consumed_at IS NULL AND l.expires_at > %(now)s),
  (SELECT count(*) FROM leases l
   WHERE l.team_id = %(team_id)s
     AND l.created_at > CAST(%(now)s AS timestamptz) - interval '1 second'
     AND l.created_at <= %(now)s)
"""

INSERT_LEASE = """
INSERT INTO leases (id, team_id, sandbox_id, vcpu, memory_mib, disk_mib, max_duration_s,
                    created_at, expires_at)
VALUES (%(id)s, %(team_id)s, %(sandbox_id)s, %(vcpu)s, %(memory_mib)s, %(disk_mib)s,
        %(max_duration_s)s, %(now)s, %(expires_at)s)
"""

_PURGE = text("DELETE FROM leases WHERE expires_at < :before")


# The statements of the first round trip (none is transaction control).
_PREPARE = prepare_in_pipeline(_KEY)


@dataclass(frozen=True, slots=True)
class LiveLease:
    """The sandbox's unconsumed, unexpired lease: a retry is answered with it."""

    id: str
    max_duration_s: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Prefetched:
    """What the first round trip of an admission read."""

    key_role: str | None  # None: no such key, or revoked
    lease: LiveLease | None
    running: int
    leases: int
    starts_last_second: int
    billing: TeamRead | None  # billing's read of its statement's row (None: it has none)


def _params(digest: str, team_id: str, sandbox_id: str, now: datetime,
            stale: timedelta) -> dict[str, object]:
    return {"digest": digest, "key": f"admission:{team_id}", "team_id": team_id,
            "sandbox_id": sandbox_id, "now": now, "stale": stale}


def _prefetched(key_row: TupleRow | None, lease_row: TupleRow | None,
                counted: TupleRow | None, billing: Prefetch | None,
                billing_row: TupleRow | None) -> Prefetched:
    assert counted is not None  # counts always answer one row
    running, leases, starts = counted
    return Prefetched(
        key_role=key_row[0] if key_row is not None and key_row[1] is None else None,
        lease=LiveLease(*lease_row) if lease_row is not None else None,
        running=int(running), leases=int(leases), starts_last_second=int(starts),
        billing=billing.read(billing_row)
        if billing is not None and billing_row is not None else None)


def prefetch(
    session: Session, digest: str, team_id: str, sandbox_id: str, now: datetime,
    stale: timedelta, billing: Prefetch | None,
) -> Prefetched:
    """The key, the team's lock, the live lease, the counts and billing's read, pipelined.

    The statements of a pipeline run one after another, each with a snapshot of its own, so
    the reads after the lock see every admission of the team that committed before it."""
    params = _params(digest, team_id, sandbox_id, now, stale)
    with driver(session, pipeline=True) as raw:
        key = raw.execute(_KEY, params, prepare=_PREPARE)
        raw.execute(_LOCK, params, prepare=_PREPARE)
        lease = raw.execute(_LIVE_LEASE, params, prepare=_PREPARE)
        counts = raw.execute(_COUNTS, params, prepare=_PREPARE)
        extra = (raw.execute(billing.sql, billing.params, prepare=prepare_in_pipeline(billing.sql))
                 if billing is not None else None)
    return _prefetched(key.fetchone(), lease.fetchone(), counts.fetchone(), billing,
                       extra.fetchone() if extra is not None else None)


async def prefetch_async(
    conn: psycopg.AsyncConnection[TupleRow], digest: str, team_id: str, sandbox_id: str,
    now: datetime, stale: timedelta, billing: Prefetch | None,
) -> Prefetched:
    """`prefetch` on the event loop's connection: the same statements, the same round trip."""
    params = _params(digest, team_id, sandbox_id, now, stale)
    async with pipelined_async(conn):
        await db_async.begin(conn)
        key = await conn.execute(_KEY, params, prepare=_PREPARE)
        await conn.execute(_LOCK, params, prepare=_PREPARE)
        lease = await conn.execute(_LIVE_LEASE, params, prepare=_PREPARE)
        counts = await conn.execute(_COUNTS, params, prepare=_PREPARE)
        extra = (await conn.execute(billing.sql, billing.params,
                                   prepare=prepare_in_pipeline(billing.sql))
                 if billing is not None else None)
    return _prefetched(await key.fetchone(), await lease.fetchone(), await counts.fetchone(),
                       billing, await extra.fetchone() if extra is not None else None)


def purge(session: Session, before: datetime) -> int:
    return int(getattr(session.execute(_PURGE, {"before": before}), "rowcount", 0) or 0)
