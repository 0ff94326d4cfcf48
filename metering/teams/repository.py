"""Every query of teams."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from metering.teams.models import Team

_ENSURE = text("""
INSERT INTO teams (id, auto_created) SELECT unnest(CAST(:ids AS text[])), true
ON CONFLICT (id) DO NOTHING RETURNING id
""")


def ensure_teams(session: Session, team_ids: Sequence[str]) -> list[str]:
    """Create unknown teams (marked auto_created); answer the ids that were new."""
    if not team_ids:
        return []
    ids = sorted(set(team_ids))
    return [r[0] for r in session.execute(_ENSURE, {"ids": ids})]


def get(session: Session, team_id: str) -> Team | None:
    return session.get(Team, team_id)


def exists(session: Session, team_id: str) -> bool:
    return session.execute(select(Team.id).where(Team.id == team_id)).first() is not None


def set_blocked(session: Session, team_id: str, reason: str, at: datetime) -> bool:
    result = session.execute(text(
        "UPDATE teams SET blocked_at = :at, blocked_reason = :reason "
        "WHERE id = :team AND blocked_at IS NULL"), {"at": at, "reason": reason, "team": team_id})
    return bool(getattr(result, "rowcount", 0))


def clear_blocked(session: Session, team_id: str, reason: str | None) -> bool:
    sql = "UPDATE teams SET blocked_at = NULL, blocked_reason = NULL WHERE id = :team"
    if reason is not None:
        sql += " AND blocked_reason = :reason"
    result = session.execute(text(sql), {"team": team_id, "reason": reason})
    return bool(getattr(result, "rowcount", 0))
