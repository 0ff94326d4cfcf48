"""Teams: creation on first sight, and the hooks other packages hang on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from metering import known
from metering.teams import repository as repo

# Called in the same transaction with (session, new team ids, when): billing assigns the
# default plan and grants its credit here. Registered by the app that wires both packages.
TeamsCreatedHook = Callable[[Session, Sequence[str], datetime], None]
_hooks: list[TeamsCreatedHook] = []


def on_teams_created(hook: TeamsCreatedHook) -> None:
    if hook not in _hooks:
        _hooks.append(hook)


def ensure_teams(session: Session, team_ids: Sequence[str], at: datetime) -> list[str]:
    unknown = known.teams.unknown(team_ids)
    if not unknown:
        return []
    created = repo.ensure_teams(session, unknown)
    if created:
        for hook in _hooks:
            hook(session, created, at)
    known.teams.remember_after_commit(session, unknown)
    return created


def block_team(session: Session, team_id: str, reason: str, at: datetime) -> bool:
    """Block a team (admissions refused, running sandboxes get kill orders from the
    enforcement sweep). Answers whether it was newly blocked; idempotent."""
    return repo.set_blocked(session, team_id, reason, at)


def unblock_team(session: Session, team_id: str, reason: str | None = None) -> bool:
    """Lift a block (of the given reason only, if named). Answers whether it changed."""
    return repo.clear_blocked(session, team_id, reason)
