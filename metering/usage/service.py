"""Usage as metering answers it: buckets over time and usage per price version, exact
integers priced by the version in force when they happened.

Prices come from the installed `Billing` (plan versions), see `metering.plugins`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from itertools import pairwise
from typing import Any

import orjson
from sqlalchemy.orm import Session

from metering import plugins
from metering.api.pagination import decode_cursor, encode_cursor
from metering.auth.service import Principal
from metering.config import Settings
from metering.core.clock import (
    EPOCH,
    from_ms,
    month_start,
    next_month_start,
    rfc3339,
    to_ms,
    utc_now,
)
from metering.core.money import add, decimal, div, fmt, gib_seconds, vcpu_seconds
from metering.core.pricing import PricePeriod, PriceSchedule
from metering.errors import BadRequest, Conflict, NotFound
from metering.usage import repository as repo
from metering.usage.schemas import (
    ExecutionOut,
    ExecutionPage,
    MetricPoint,
    MetricsOut,
    UsageOut,
    UsagePoint,
    UsageTotals,
)


def schedule_for(session: Session, team_id: str, start: datetime, end: datetime) -> PriceSchedule:
    """The team's prices in [start, end), from the installed billing."""
    return plugins.billing().price_schedule(session, team_id, start, end)

GRANULARITIES = ("hour", "day", "month")
MAX_BUCKETS = 10_000


def _align(moment: datetime, granularity: str) -> datetime:
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return month_start(moment)


def _step(moment: datetime, granularity: str) -> datetime:
    if granularity == "hour":
        return moment + timedelta(hours=1)
    if granularity == "day":
        return moment + timedelta(days=1)
    return next_month_start(moment)


def bucket_bounds(start: datetime, end: datetime, granularity: str) -> list[datetime]:
    """[start, calendar boundaries inside, end] in UTC."""
    if granularity not in GRANULARITIES:
        raise BadRequest(f"granularity: must be one of {', '.join(GRANULARITIES)}")
    if end <= start:
        raise BadRequest("end: must be after start")
    bounds = [start]
    cursor = _step(_align(start, granularity), granularity)
    while cursor < end:
        bounds.append(cursor)
        if len(bounds) > MAX_BUCKETS:
            raise BadRequest(
                f"start/end: more than {MAX_BUCKETS} {granularity} buckets; narrow the range "
                "or use a coarser granularity")
        cursor = _step(cursor, granularity)
    bounds.append(end)
    return bounds


@dataclass(frozen=True, slots=True)
class PricedBucket:
    start: datetime
    end: datetime
    vcpu_ms: int
    mib_ms: int
    cost: Decimal


def priced_usage(
    session: Session, team_id: str, bounds: list[datetime], now: datetime,
    stale_after: timedelta, schedule: PriceSchedule | None = None,
) -> list[PricedBucket]:
    """Usage and exact (unrounded) cost per bucket, each piece priced by the version in force."""
    used = _priced_totals(session, team_id, bounds, now, stale_after, schedule)
    zero = Decimal(0)
    return [PricedBucket(lo, hi, *used.get(i, (0, 0, zero)))
            for i, (lo, hi) in enumerate(pairwise(bounds))]


def _priced_totals(
    session: Session, team_id: str, bounds: list[datetime], now: datetime,
    stale_after: timedelta, schedule: PriceSchedule | None = None, literal: str | None = None,
) -> dict[int, tuple[int, int, Decimal]]:
    """(vCPU-ms, MiB-ms, exact cost) by bucket index, only the buckets with usage; a bucket
    that a price change cuts is priced piece by piece."""
    schedule = schedule or schedule_for(session, team_id, bounds[0], bounds[-1])
    fine = priced_bounds(bounds, schedule)
    kept = literal if len(fine) == len(bounds) else None  # no price change inside
    return price_totals(bounds, schedule,
                        repo.bucket_totals(session, team_id, fine, now, stale_after, kept))


def priced_bounds(bounds: Sequence[datetime], schedule: PriceSchedule) -> list[datetime]:
    """What `priced_usage` reads usage over: the buckets' bounds and every price change
    inside them (for a bulk read of many teams, `bucket_usage_many`)."""
    cuts = schedule.cuts(bounds[0], bounds[-1])
    return sorted(set(bounds) | set(cuts)) if cuts else list(bounds)


def price_totals(bounds: Sequence[datetime], schedule: PriceSchedule,
                 totals: Mapping[int, tuple[int, int]]) -> dict[int, tuple[int, int, Decimal]]:
    """`priced_usage`'s figures by bucket index, from the usage read over
    `priced_bounds(bounds, schedule)` ((vCPU-ms, MiB-ms) by index into those, only pieces
    with usage): each piece priced by the version in force at its start."""
    cuts = schedule.cuts(bounds[0], bounds[-1])
    fine = sorted(set(bounds) | set(cuts)) if cuts else bounds
    out: dict[int, tuple[int, int, Decimal]] = {}
    for piece, (piece_v, piece_m) in sorted(totals.items()):
        start = fine[piece]
        index = bisect_right(bounds, start) - 1 if cuts else piece
        cost = schedule.at(start).prices.cost(piece_v, piece_m)
        before = out.get(index)
        out[index] = ((piece_v, piece_m, cost) if before is None else
                      (before[0] + piece_v, before[1] + piece_m, add(before[2], cost)))
    return out


def now_ms_truncated() -> datetime:
    return from_ms(to_ms(utc_now()))


@dataclass(frozen=True, slots=True)
class PricedUsage:
    """Usage of one team under one price period (version) within a window."""

    period: PricePeriod
    vcpu_ms: int
    mib_ms: int


def usage_by_price_period(
    session: Session, team_id: str, start: datetime, end: datetime, now: datetime,
    stale_after: timedelta, schedule: PriceSchedule | None = None,
) -> list[PricedUsage]:
    """The public usage function billing rates from: [start, end) cut wherever the team's
    prices change, merged per price version (exact integers). A caller that already holds
    the team's price schedule passes it to save the lookup."""
    schedule = schedule or schedule_for(session, team_id, start, end)
    pieces = repo.bucket_usage(session, team_id, period_bounds(start, end, schedule), now,
                               stale_after)
    return price_periods(schedule, pieces)


def period_bounds(start: datetime, end: datetime, schedule: PriceSchedule) -> list[datetime]:
    """What `usage_by_price_period` reads usage over: the window cut at price changes."""
    return [start, *schedule.cuts(start, end), end]


def price_periods(schedule: PriceSchedule, pieces: Sequence[repo.BucketUsage]
                  ) -> list[PricedUsage]:
    """`usage_by_price_period` from the usage read over `period_bounds`."""
    merged: dict[str, list[Any]] = {}
    for piece in pieces:
        period = schedule.at(piece.start)
        slot = merged.setdefault(period.version_id, [period, 0, 0])
        slot[1] += piece.vcpu_ms
        slot[2] += piece.mib_ms
    return [PricedUsage(p, v, m) for p, v, m in merged.values()]


# --- the answers of the usage endpoints ---------------------------------------------------


def _stale(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.stale_after_s)


def _utc_text(moment: datetime) -> str:
    """`rfc3339` for the many bounds of a series (C-level formatting: same text)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def _in_utc(moment: datetime | None) -> datetime | None:
    """A time whose offset is zero, in `datetime.UTC` itself (the same instant and the same
    calendar), so the bounds of a long series format without a conversion each."""
    if moment is None or moment.tzinfo is UTC or moment.utcoffset():
        return moment
    return moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Frame:
    """A series' bounds, their texts and each bucket's answer when it is empty."""

    bounds: tuple[datetime, ...]
    texts: tuple[str, ...]
    empty: tuple[bytes, ...]  # `UsagePoint` JSON of a bucket without usage
    literal: str  # the bounds as the database is sent them


@lru_cache(maxsize=8)  # at most 10,000 buckets each: a few MiB in all
def _kept_frame(start: datetime, end: datetime, granularity: str) -> _Frame:
    return _series_frame(start, end, granularity)


def _series_frame(start: datetime, end: datetime, granularity: str) -> _Frame:
    """The same for every read of the same range (a dashboard asks for the same ones again
    and again): `_kept_frame` keeps the last few."""
    bounds = bucket_bounds(start, end, granularity)
    texts = tuple(_utc_text(b) for b in bounds)
    empty = tuple(orjson.dumps({"start": texts[i], "end": texts[i + 1], "vcpu_seconds": "0",
                                "gib_seconds": "0", "cost": "0"})
                  for i in range(len(texts) - 1))
    return _Frame(tuple(bounds), texts, empty, repo.timestamptz_array(bounds))


def _series_bounds(start: datetime | None, end: datetime | None,
                   now: datetime) -> tuple[datetime, datetime]:
    """A series' bounds in UTC: by default from the month's start to now."""
    return _in_utc(start) or month_start(now), _in_utc(end) or now


def _usage(
    session: Session, settings: Settings, team_id: str, start: datetime | None,
    end: datetime | None, granularity: str,
) -> tuple[_Frame, dict[int, dict[str, str]], dict[str, str]]:
    """A series' frame, the points of its buckets with usage (by index), and its totals."""
    now = now_ms_truncated()
    lo, hi = _series_bounds(start, end, now)
    # A range ending now is new every time: only fixed ranges are worth keeping.
    frame = (_kept_frame if end is not None else _series_frame)(lo, hi, granularity)
    used = _priced_totals(session, team_id, list(frame.bounds), now, _stale(settings),
                          literal=frame.literal)
    points: dict[int, dict[str, str]] = {}
    total_v = total_m = 0
    for i, (vcpu_ms, mib_ms, cost) in used.items():
        total_v += vcpu_ms
        total_m += mib_ms
        points[i] = {"start": frame.texts[i], "end": frame.texts[i + 1],
                     "vcpu_seconds": fmt(vcpu_seconds(vcpu_ms)),
                     "gib_seconds": fmt(gib_seconds(mib_ms)), "cost": fmt(cost)}
    totals = {"vcpu_seconds": fmt(vcpu_seconds(total_v)),
              "gib_seconds": fmt(gib_seconds(total_m)),
              "cost": fmt(add(*(cost for _, _, cost in used.values())))}
    return frame, points, totals


def usage_answer(
    session: Session, settings: Settings, team_id: str, start: datetime | None,
    end: datetime | None, granularity: str,
) -> dict[str, Any]:
    """The body of `GET /v1/teams/{team_id}/usage` (`UsageOut`'s shape) as plain data."""
    frame, points, totals = _usage(session, settings, team_id, start, end, granularity)
    series = [points.get(i) or orjson.loads(empty) for i, empty in enumerate(frame.empty)]
    return {"team_id": team_id, "granularity": granularity, "currency": settings.currency,
            "series": series, "totals": totals}


_BUCKET_AT_LEAST = {"hour": timedelta(hours=1), "day": timedelta(days=1),
                   "month": timedelta(days=28)}


def series_length(start: datetime | None, end: datetime | None, granularity: str) -> int:
    """At most how many buckets the series of `usage_json` has, known before any work (the
    bounds default as there: the month's start, now)."""
    lo, hi = _series_bounds(start, end, now_ms_truncated())
    return max(0, (hi - lo) // _BUCKET_AT_LEAST[granularity] + 1)


def usage_json(
    session: Session, settings: Settings, team_id: str, start: datetime | None,
    end: datetime | None, granularity: str,
) -> tuple[bytes, int]:
    """`usage_answer` as its JSON, and its number of points. A year of hours is 8,760 points,
    most of them empty: those are the range's kept JSON, joined, not built again."""
    frame, points, totals = _usage(session, settings, team_id, start, end, granularity)
    series = list(frame.empty)
    for i, point in points.items():
        series[i] = orjson.dumps(point)
    head = orjson.dumps({"team_id": team_id, "granularity": granularity,
                         "currency": settings.currency})
    body = b"".join((head[:-1], b',"series":[', b",".join(series), b'],"totals":',
                     orjson.dumps(totals), b"}"))
    return body, len(series)


def usage_series(
    session: Session, settings: Settings, team_id: str, start: datetime | None,
    end: datetime | None, granularity: str,
) -> UsageOut:
    """Usage and cost per bucket from `start` (default: the month's start) to `end` (now)."""
    answer = usage_answer(session, settings, team_id, start, end, granularity)
    return UsageOut(
        team_id=answer["team_id"], granularity=answer["granularity"],
        currency=answer["currency"], series=[UsagePoint(**p) for p in answer["series"]],
        totals=UsageTotals(**answer["totals"]))


def execution_rows(session: Session, settings: Settings, team_id: str, rows: Sequence[Any],
                   now: datetime | None = None) -> list[ExecutionOut]:
    """Execution rows (as `list_executions` reads them) with their state, usage and cost."""
    now = now or now_ms_truncated()
    stale = _stale(settings)
    usage = repo.execution_usage(session, [r.execution_id for r in rows], EPOCH,
                                 now + timedelta(days=3650), now, stale)
    schedule = schedule_for(session, team_id, EPOCH, now)
    out = []
    for r in rows:
        vcpu_ms, mib_ms = usage.get(r.execution_id, (0, 0))
        running = repo.is_running(r.end_at, r.last_event_at, now, stale)
        ended_at = r.end_at if r.end_at is not None else (None if running else r.last_event_at)
        out.append(ExecutionOut(
            execution_id=r.execution_id, sandbox_id=r.sandbox_id, team_id=r.team_id,
            template_id=r.template_id, state="running" if running else "ended",
            started_at=rfc3339(r.start_at), start_kind=r.start_kind,
            ended_at=rfc3339(ended_at) if ended_at else None, end_kind=r.end_kind,
            end_reason=r.end_reason, end_inferred=r.end_at is None and not running,
            vcpu=r.vcpu, memory_mib=r.memory_mib, disk_mib=r.disk_mib,
            last_event_at=rfc3339(r.last_event_at),
            vcpu_seconds=fmt(vcpu_seconds(vcpu_ms)), gib_seconds=fmt(gib_seconds(mib_ms)),
            # An execution is priced at the version in force at its start (shown figure only;
            # invoices split usage at version boundaries exactly).
            cost=fmt(schedule.at(r.start_at).prices.cost(vcpu_ms, mib_ms))))
    return out


def execution_cursor(after: str | None) -> tuple[datetime, str] | None:
    """The (start, execution id) an executions page continues after."""
    if not after:
        return None
    parts = decode_cursor(after)
    try:
        return datetime.fromisoformat(parts[0]), str(parts[1])
    except (ValueError, IndexError, TypeError) as exc:
        raise BadRequest("after: not a cursor this service issued") from exc


def next_execution_cursor(rows: Sequence[Any], more: bool) -> str | None:
    if not (more and rows):
        return None
    return encode_cursor(rows[-1].start_at.isoformat(), rows[-1].execution_id)


def executions_page(
    session: Session, settings: Settings, team_id: str, state: str | None,
    start: datetime | None, end: datetime | None, limit: int, after: str | None,
) -> ExecutionPage:
    """The team's executions newest first (`running`/`ended`/all), with usage and cost."""
    now = now_ms_truncated()
    lo = start or datetime.fromtimestamp(0, now.tzinfo)
    hi = end or now + timedelta(days=1)
    rows = repo.list_executions(session, team_id, state, lo, hi, now, _stale(settings),
                                limit + 1, execution_cursor(after))
    more = len(rows) > limit
    rows = rows[:limit]
    return ExecutionPage(data=execution_rows(session, settings, team_id, rows, now),
                         next_cursor=next_execution_cursor(rows, more))


def sandbox_owner(session: Session, principal: Principal, sandbox_id: str) -> str:
    """The team whose sandbox of this id the key means. Sandbox ids are the orchestrator's and
    may repeat across teams: a team key means its own; finance and admin may leave the team
    out only for an id one team used (else 409: name the team)."""
    if principal.role == "team" and principal.team_id is not None:
        return principal.team_id
    principal.require("team", "finance")
    teams = repo.sandbox_teams(session, sandbox_id, limit=2)
    if not teams:
        raise NotFound(f"no sandbox {sandbox_id}")
    if len(teams) > 1:
        raise Conflict(f"sandbox id {sandbox_id} was used by more than one team; ask "
                       f"GET /v1/teams/{{team_id}}/sandboxes/{sandbox_id}/metrics")
    return teams[0]


def sandbox_metrics(
    session: Session, principal: Principal, team_id: str, sandbox_id: str,
    start: datetime | None, end: datetime | None,
) -> MetricsOut:
    """Per-minute cpu and memory of one team's sandbox, for a key that may read the team
    (others: not found). Every query names the team: another team's sandbox of the same id
    never shows."""
    if not principal.can_read_team(team_id):
        if principal.role not in ("team", "finance", "admin"):
            principal.require("team", "finance")
        raise NotFound(f"no sandbox {sandbox_id}")
    if not repo.has_sandbox(session, team_id, sandbox_id):
        raise NotFound(f"no sandbox {sandbox_id}")
    now = now_ms_truncated()
    hi = end or now + timedelta(minutes=1)
    lo = start or hi - timedelta(hours=24)
    if hi <= lo:
        raise BadRequest("end: must be after start")
    if hi - lo > timedelta(days=31):
        raise BadRequest("start/end: at most 31 days of per-minute metrics at once")
    points = []
    for row in repo.sandbox_metrics(session, team_id, sandbox_id, lo, hi):
        minute, samples, cpu_n, cpu_sum, cpu_max, mem_n, mem_sum, mem_max = row
        points.append(MetricPoint(
            minute=rfc3339(minute), samples=int(samples),
            cpu_pct_avg=fmt(div(int(cpu_sum), int(cpu_n) * 100).quantize(decimal("0.01")))
            if cpu_n else None,
            cpu_pct_max=fmt(div(int(cpu_max), 100)) if cpu_max is not None else None,
            memory_used_mib_avg=fmt(div(int(mem_sum), int(mem_n)).quantize(decimal("0.01")))
            if mem_n else None,
            memory_used_mib_max=mem_max))
    return MetricsOut(sandbox_id=sandbox_id, data=points, next_cursor=None)
