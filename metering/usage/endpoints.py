"""Dashboard reads of usage: the usage series, executions, and per-sandbox metrics."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from metering.api.deps import PrincipalDep, SessionDep, SettingsDep, aware, team_reader
from metering.api.pagination import decode_cursor, encode_cursor
from metering.core.clock import month_start, rfc3339
from metering.core.money import fmt, gib_seconds, vcpu_seconds
from metering.errors import BadRequest, NotFound
from metering.usage import repository as reads
from metering.usage.schemas import (
    ExecutionPage,
    MetricsOut,
    UsageOut,
)
from metering.usage.service import bucket_bounds, now_ms_truncated, priced_usage, schedule_for

router = APIRouter(tags=["usage"])


@router.get("/v1/teams/{team_id}/usage", response_model=UsageOut)
def get_usage(
    team_id: str, session: SessionDep, principal: PrincipalDep, settings: SettingsDep,
    start: datetime | None = None, end: datetime | None = None,
    granularity: Literal["hour", "day", "month"] = "day",
) -> dict[str, Any]:
    """Usage over time: vCPU-seconds, GiB-seconds and cost per bucket (exact decimals)."""
    team_reader(principal, team_id)
    now = now_ms_truncated()
    lo = aware(start, "start") or month_start(now)
    hi = aware(end, "end") or now
    bounds = bucket_bounds(lo, hi, granularity)
    buckets = priced_usage(session, team_id, bounds, now, timedelta(seconds=settings.stale_after_s))
    total_v = sum(b.vcpu_ms for b in buckets)
    total_m = sum(b.mib_ms for b in buckets)
    total_c = sum((b.cost for b in buckets), start=vcpu_seconds(0))
    return {
        "team_id": team_id, "granularity": granularity, "currency": settings.currency,
        "series": [{
            "start": rfc3339(b.start), "end": rfc3339(b.end),
            "vcpu_seconds": fmt(vcpu_seconds(b.vcpu_ms)), "gib_seconds": fmt(gib_seconds(b.mib_ms)),
            "cost": fmt(b.cost),
        } for b in buckets],
        "totals": {"vcpu_seconds": fmt(vcpu_seconds(total_v)),
                   "gib_seconds": fmt(gib_seconds(total_m)), "cost": fmt(total_c)},
    }


@router.get("/v1/teams/{team_id}/sandboxes", response_model=ExecutionPage)
def list_sandboxes(
    team_id: str, session: SessionDep, principal: PrincipalDep, settings: SettingsDep,
    state: Literal["running", "ended"] | None = None,
    start: datetime | None = None, end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100, after: str | None = None,
) -> dict[str, Any]:
    """Executions of the team (newest first) with their usage and cost."""
    team_reader(principal, team_id)
    now = now_ms_truncated()
    stale = timedelta(seconds=settings.stale_after_s)
    lo = aware(start, "start") or datetime.fromtimestamp(0, now.tzinfo)
    hi = aware(end, "end") or now + timedelta(days=1)
    cursor = None
    if after:
        parts = decode_cursor(after)
        try:
            cursor = (datetime.fromisoformat(parts[0]), str(parts[1]))
        except (ValueError, IndexError, TypeError) as exc:
            raise BadRequest("after: not a cursor this service issued") from exc
    rows = reads.list_executions(session, team_id, state, lo, hi, now, stale, limit + 1, cursor)
    more = len(rows) > limit
    rows = rows[:limit]
    ids = [r.execution_id for r in rows]
    far_past = datetime.fromtimestamp(0, now.tzinfo)
    usage = reads.execution_usage(session, ids, far_past, now + timedelta(days=3650), now, stale)
    schedule = schedule_for(session, team_id, far_past, now)
    data = []
    for r in rows:
        vcpu_ms, mib_ms = usage.get(r.execution_id, (0, 0))
        running = r.end_at is None and now - r.last_event_at < stale
        ended_at = r.end_at if r.end_at is not None else (None if running else r.last_event_at)
        data.append({
            "execution_id": r.execution_id, "sandbox_id": r.sandbox_id, "team_id": r.team_id,
            "template_id": r.template_id, "state": "running" if running else "ended",
            "started_at": rfc3339(r.start_at), "start_kind": r.start_kind,
            "ended_at": rfc3339(ended_at) if ended_at else None, "end_kind": r.end_kind,
            "end_reason": r.end_reason, "end_inferred": r.end_at is None and not running,
            "vcpu": r.vcpu, "memory_mib": r.memory_mib, "disk_mib": r.disk_mib,
            "last_event_at": rfc3339(r.last_event_at),
            "vcpu_seconds": fmt(vcpu_seconds(vcpu_ms)), "gib_seconds": fmt(gib_seconds(mib_ms)),
            # An execution is priced at the version in force at its start (shown figure only;
            # invoices split usage at version boundaries exactly).
            "cost": fmt(schedule.at(r.start_at).prices.cost(vcpu_ms, mib_ms)),
        })
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = encode_cursor(last.start_at.isoformat(), last.execution_id)
    return {"data": data, "next_cursor": next_cursor}


@router.get("/v1/sandboxes/{sandbox_id}/metrics", response_model=MetricsOut)
def get_metrics(
    sandbox_id: str, session: SessionDep, principal: PrincipalDep,
    start: datetime | None = None, end: datetime | None = None,
) -> dict[str, Any]:
    """Per-minute cpu and memory of a sandbox (average and maximum of its samples)."""
    team_id = reads.sandbox_team(session, sandbox_id)
    if team_id is None or not principal.can_read_team(team_id):
        if principal.role not in ("team", "finance", "admin"):
            principal.require("team", "finance")
        raise NotFound(f"no sandbox {sandbox_id}")
    now = now_ms_truncated()
    hi = aware(end, "end") or now + timedelta(minutes=1)
    lo = aware(start, "start") or hi - timedelta(hours=24)
    if hi <= lo:
        raise BadRequest("end: must be after start")
    if hi - lo > timedelta(days=31):
        raise BadRequest("start/end: at most 31 days of per-minute metrics at once")
    from metering.core.money import decimal, div

    points = []
    for row in reads.sandbox_metrics(session, sandbox_id, lo, hi):
        minute, samples, cpu_n, cpu_sum, cpu_max, mem_n, mem_sum, mem_max = row
        points.append({
            "minute": rfc3339(minute), "samples": int(samples),
            "cpu_pct_avg": fmt(div(int(cpu_sum), int(cpu_n) * 100).quantize(decimal("0.01")))
            if cpu_n else None,
            "cpu_pct_max": fmt(div(int(cpu_max), 100)) if cpu_max is not None else None,
            "memory_used_mib_avg": fmt(div(int(mem_sum), int(mem_n)).quantize(decimal("0.01")))
            if mem_n else None,
            "memory_used_mib_max": mem_max,
        })
    return {"sandbox_id": sandbox_id, "data": points, "next_cursor": None}
