"""Every query of admissions: the per-team lock, counts, and leases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")

_LIVE_LEASE = text("""
SELECT id, max_duration_s, expires_at FROM leases
WHERE sandbox_id = :sandbox_id AND team_id = :team_id AND consumed_at IS NULL
  AND expires_at > :now
ORDER BY created_at DESC LIMIT 1
""")

_COUNTS = text("""
SELECT
  (SELECT count(*) FROM executions e
   WHERE e.team_id = :team_id AND e.end_at IS NULL AND e.inferred_end_at IS NULL
     AND e.start_at IS NOT NULL
     AND e.last_event_at > CAST(:now AS timestamptz) - CAST(:stale AS interval)),
  (SELECT count(*) FROM leases l
   WHERE l.team_id = :team_id AND l.consumed_at IS NULL AND l.expires_at > :now),
  (SELECT count(*) FROM leases l
   WHERE l.team_id = :team_id AND l.created_at > CAST(:now AS timestamptz) - interval '1 second'
     AND l.created_at <= :now)
""")

_INSERT = text("""
INSERT INTO leases (id, team_id, sandbox_id, vcpu, memory_mib, disk_mib, max_duration_s,
                    created_at, expires_at)
VALUES (:id, :team_id, :sandbox_id, :vcpu, :memory_mib, :disk_mib, :max_duration_s, :now,
        :expires_at)
""")

_CONSUME = text("""
UPDATE leases SET consumed_at = :now
WHERE sandbox_id = ANY(CAST(:sandboxes AS text[])) AND consumed_at IS NULL
""")

_PURGE = text("DELETE FROM leases WHERE expires_at < :before")


def lock_team(session: Session, team_id: str) -> None:
    """Serialize admissions of one team (transaction-scoped), so counts and inserts are atomic."""
    session.execute(_LOCK, {"key": f"admission:{team_id}"})


def live_lease(session: Session, team_id: str, sandbox_id: str, now: datetime) -> Any:
    return session.execute(_LIVE_LEASE, {
        "sandbox_id": sandbox_id, "team_id": team_id, "now": now}).first()


def counts(session: Session, team_id: str, now: datetime, stale: timedelta) -> tuple[int, int, int]:
    row = session.execute(_COUNTS, {"team_id": team_id, "now": now, "stale": stale}).one()
    return int(row[0]), int(row[1]), int(row[2])


def insert_lease(session: Session, **values: Any) -> None:
    session.execute(_INSERT, values)


def consume(session: Session, sandboxes: Sequence[str], now: datetime) -> None:
    if sandboxes:
        session.execute(_CONSUME, {"sandboxes": sorted(set(sandboxes)), "now": now})


def purge(session: Session, before: datetime) -> int:
    return int(getattr(session.execute(_PURGE, {"before": before}), "rowcount", 0) or 0)
