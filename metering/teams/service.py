"""Teams: creation on first sight, and the hooks other packages hang on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import event
from sqlalchemy.orm import Session

from metering.teams import repository as repo

# Called in the same transaction with (session, new team ids, when): billing assigns the
# default plan and grants its credit here. Registered by the app that wires both packages.
TeamsCreatedHook = Callable[[Session, Sequence[str], datetime], None]
_hooks: list[TeamsCreatedHook] = []


def on_teams_created(hook: TeamsCreatedHook) -> None:
    if hook not in _hooks:
        _hooks.append(hook)


# Teams are never deleted, so once a process has seen a team exist it need not ask again:
# ingest checks a few dozen team ids per batch, tens of times a second.
_known: set[str] = set()
_KNOWN_LIMIT = 200_000


def forget_known_teams() -> None:
    """Drop the cache (tests that wipe the database call this)."""
    _known.clear()


def ensure_teams(session: Session, team_ids: Sequence[str], at: datetime) -> list[str]:
    unknown = [t for t in set(team_ids) if t not in _known]
    if not unknown:
        return []
    created = repo.ensure_teams(session, unknown)
    if created:
        for hook in _hooks:
            hook(session, created, at)
    if len(_known) > _KNOWN_LIMIT:
        _known.clear()
    # Only after this transaction commits are they surely there; a rollback forgets them.
    pending = set(unknown)

    @event.listens_for(session, "after_commit", once=True)
    def remember(_: Session) -> None:
        _known.update(pending)

    return created
