"""Every query of teams."""

from __future__ import annotations

from collections.abc import Sequence

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
