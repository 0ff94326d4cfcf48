"""Teams: creation on first sight, blocking and unblocking."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from metering import known, plugins
from metering.teams import repository as repo


def ensure_teams(session: Session, team_ids: Sequence[str], at: datetime) -> list[str]:
    """Create the teams not seen before; billing starts them on its default plan in the same
    transaction (`Billing.teams_created`)."""
    unknown = known.teams.unknown(team_ids)
    if not unknown:
        return []
    created = repo.ensure_teams(session, unknown)
    if created:
        plugins.billing().teams_created(session, created, at)
    known.teams.remember_after_commit(session, unknown)
    return created


def block_team(session: Session, team_id: str, reason: str, at: datetime) -> bool:
    """Block a team (admissions refused, running sandboxes get kill orders from the
    enforcement sweep). Answers whether it was newly blocked; idempotent."""
    return repo.set_blocked(session, team_id, reason, at)


def unblock_team(session: Session, team_id: str, reason: str | None = None) -> bool:
    """Lift a block (of the given reason only, if named). Answers whether it changed."""
    return repo.clear_blocked(session, team_id, reason)
