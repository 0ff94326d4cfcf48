"""The usage endpoints: the usage series, executions, and per-sandbox metrics (HTTP only;
the answers are `metering.usage.service`'s)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from metering.api import bulkhead, throttle
from metering.api.deps import (
    CredentialsDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    aware,
    in_worker,
    team_reader,
)
from metering.api.long_reads import LongReads
from metering.auth.service import Principal
from metering.usage import service
from metering.usage.schemas import ExecutionPage, MetricsOut, UsageOut

router = APIRouter(tags=["usage"])


@router.get("/v1/teams/{team_id}/usage", response_model=UsageOut)
async def get_usage(
    team_id: str, request: Request, credentials: CredentialsDep, settings: SettingsDep,
    start: datetime | None = None, end: datetime | None = None,
    granularity: Literal["hour", "day", "month"] = "day",
) -> Response:
    """Usage over time: vCPU-seconds, GiB-seconds and cost per bucket (exact decimals).

    A long series costs its key more of its rate allowance: a token per 1,000 points besides
    the request's own (a year of hours, 8,760 points, costs 9)."""

    lo, hi = aware(start, "start"), aware(end, "end")

    def work(session: Session, principal: Principal) -> tuple[bytes, int]:
        team_reader(principal, team_id)
        # A year of hours is 8,760 points: serialized here, in the worker thread, in one go.
        return service.usage_json(session, settings, team_id, lo, hi, granularity)

    if service.series_length(lo, hi, granularity) > throttle.POINTS_PER_TOKEN:
        helpers: LongReads | None = getattr(request.app.state, "long_reads", None)
        if helpers is None:
            async with bulkhead.long_read(request):  # one long series at a time per process
                body, points = await in_worker(request, credentials, work)
        else:
            # The key and team checks here; the series in a helper process (one at a time).
            await in_worker(request, credentials, lambda _, p: team_reader(p, team_id))
            async with bulkhead.long_read(request):
                body, points = await helpers.read(service.usage_json, team_id, lo, hi,
                                                  granularity)
    else:
        body, points = await in_worker(request, credentials, work)
    throttle.charge(request.scope, points)  # a long series costs its key more of its allowance
    return Response(body, media_type="application/json")


@router.get("/v1/teams/{team_id}/sandboxes", response_model=ExecutionPage)
def list_sandboxes(
    team_id: str, session: SessionDep, principal: PrincipalDep, settings: SettingsDep,
    state: Literal["running", "ended"] | None = None,
    start: datetime | None = None, end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100, after: str | None = None,
) -> ExecutionPage:
    """Executions of the team (newest first) with their usage and cost."""
    team_reader(principal, team_id)
    return service.executions_page(session, settings, team_id, state, aware(start, "start"),
                                   aware(end, "end"), limit, after)


@router.get("/v1/sandboxes/{sandbox_id}/metrics", response_model=MetricsOut)
def get_metrics(
    sandbox_id: str, session: SessionDep, principal: PrincipalDep,
    start: datetime | None = None, end: datetime | None = None,
) -> MetricsOut:
    """Per-minute cpu and memory of the key's team's sandbox (average and maximum of its
    samples). Sandbox ids may repeat across teams: finance and admin keys name the team with
    `GET /v1/teams/{team_id}/sandboxes/{sandbox_id}/metrics` (here only an id one team used)."""
    team_id = service.sandbox_owner(session, principal, sandbox_id)
    return service.sandbox_metrics(session, principal, team_id, sandbox_id,
                                   aware(start, "start"), aware(end, "end"))


@router.get("/v1/teams/{team_id}/sandboxes/{sandbox_id}/metrics", response_model=MetricsOut)
def get_team_metrics(
    team_id: str, sandbox_id: str, session: SessionDep, principal: PrincipalDep,
    start: datetime | None = None, end: datetime | None = None,
) -> MetricsOut:
    """Per-minute cpu and memory of one team's sandbox (average and maximum of its samples)."""
    return service.sandbox_metrics(session, principal, team_id, sandbox_id,
                                   aware(start, "start"), aware(end, "end"))
