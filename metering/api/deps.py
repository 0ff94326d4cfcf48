"""FastAPI dependencies: the request's session and the caller's key, as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from metering.api import bulkhead, throttle
from metering.auth.service import Principal, resolve
from metering.config import Settings
from metering.db import transaction
from metering.errors import BadRequest, NotFound, Unauthorized

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """The request's unit of work: committed when the handler returns, before the response
    is sent (the dependency has function scope); rolled back if it raises."""
    with transaction(bulkhead.sessions_for(request)) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def authenticate(session: Session, token: str | None) -> Principal:
    if not token:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    principal = resolve(session, token)
    if principal is None:
        raise Unauthorized("unknown or revoked API key")
    throttle.remember(token, principal.key_id, principal.role)
    return principal


def get_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return authenticate(session, credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def team_reader(principal: Principal, team_id: str) -> None:
    """A key that may not read a team is told the team does not exist (no probing)."""
    if not principal.can_read_team(team_id):
        if principal.role == "team":
            raise NotFound(f"no team {team_id}")
        principal.require("team", "finance")


# Times the API accepts: PostgreSQL and date arithmetic (month and day steps) overflow beyond.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def aware(moment: datetime | None, name: str) -> datetime | None:
    """A query or body time must carry its offset and lie in 1970..9000 (UTC); else a 400
    names the field."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise BadRequest(f"{name}: must carry a UTC offset or Z")
    try:
        in_range = EARLIEST <= moment.astimezone(UTC) < LATEST
    except OverflowError:
        in_range = False
    if not in_range:
        raise BadRequest(f"{name}: must lie between 1970 and 9000 (UTC)")
    return moment


T = TypeVar("T")


async def in_worker(
    request: Request, credentials: HTTPAuthorizationCredentials | None,
    work: Callable[[Session, Principal], T],
) -> T:
    """Run a hot read or write as one unit of work in one worker-thread hop (key check
    included), instead of a hop per sync dependency: the latency-sensitive endpoints use it."""
    factory = bulkhead.sessions_for(request)
    token = credentials.credentials if credentials else None

    def run() -> T:
        with transaction(factory) as session:
            return work(session, authenticate(session, token))

    return await run_in_threadpool(run)


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
