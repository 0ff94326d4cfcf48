"""Keeping executions true to their lifecycle events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any, cast

from sqlalchemy.orm import Session

from metering.core.clock import from_ms, month_start, next_month_start, to_ms, utc_now
from metering.core.money import add
from metering.core.pricing import PricePeriod, PriceSchedule
from metering.core.usage import LifecycleEvent, LifecycleKind, build_timeline
from metering.errors import BadRequest
from metering.executions import pricing, reads
from metering.executions import repository as repo
from metering.executions.repository import ExecutionKey, Recomputed


def _as_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    return int(value)


def recompute(session: Session, keys: Sequence[ExecutionKey]) -> None:
    """Rebuild the named executions from all their lifecycle events (stored + just added).

    The rows are locked first, so two batches touching one execution serialize and the
    second sees the first's events.
    """
    if not keys:
        return
    team_of = repo.ensure_and_lock(session, keys)
    ids = list(team_of)
    # Take the executions' old settled usage out of the rollups; put the new one back below.
    repo.apply_rollup_delta(session, ids, -1)
    by_execution: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in repo.lifecycle_rows(session, ids):
        by_execution[row[0]].append(row)
    items: list[Recomputed] = []
    for execution_id, rows in by_execution.items():
        events: list[LifecycleEvent] = []
        disk: int | None = None
        template: str | None = None
        newest: datetime = rows[0][2]
        start_ms: int | None = None
        for _, type_, time, data, source, event_id in rows:
            kind = cast(LifecycleKind, type_.rsplit(".", 1)[1])
            newest = max(newest, time)
            at = to_ms(time)
            events.append(LifecycleEvent(
                kind=kind, at_ms=at, vcpu=_as_int(data.get("vcpu")),
                memory_mib=_as_int(data.get("memory_mib")), source=source, event_id=event_id,
                reason=data.get("reason") if kind == "killed" else None,
            ))
            if kind in ("created", "resumed") and (start_ms is None or at < start_ms):
                start_ms = at
                disk = _as_int(data.get("disk_mib"))
                template = data.get("template_id")
        timeline = build_timeline(events)
        items.append(Recomputed(
            execution_id=execution_id,
            team_id=team_of[execution_id],
            timeline=timeline,
            start_at=None if timeline.start_ms is None else from_ms(timeline.start_ms),
            end_at=None if timeline.true_end_ms is None else from_ms(timeline.true_end_ms),
            disk_mib=disk,
            template_id=template,
            last_event_at=newest,
            segment_bounds=tuple(
                (from_ms(s.start_ms), None if s.end_ms is None else from_ms(s.end_ms))
                for s in timeline.segments
            ),
        ))
    repo.store_recomputed(session, items)
    repo.apply_rollup_delta(session, ids, +1)


# --- reads -------------------------------------------------------------------------------

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
    schedule = schedule or pricing.schedule_for(session, team_id, bounds[0], bounds[-1])
    cuts = schedule.cuts(bounds[0], bounds[-1])
    fine = sorted(set(bounds) | set(cuts))
    pieces = reads.bucket_usage(session, team_id, fine, now, stale_after)
    out: list[PricedBucket] = []
    index = 0
    for lo, hi in pairwise(bounds):
        vcpu_ms = mib_ms = 0
        cost = Decimal(0)
        while index < len(pieces) and pieces[index].start < hi:
            piece = pieces[index]
            vcpu_ms += piece.vcpu_ms
            mib_ms += piece.mib_ms
            cost = add(cost, schedule.at(piece.start).prices.cost(piece.vcpu_ms, piece.mib_ms))
            index += 1
        out.append(PricedBucket(lo, hi, vcpu_ms, mib_ms, cost))
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
    schedule = schedule or pricing.schedule_for(session, team_id, start, end)
    bounds = [start, *schedule.cuts(start, end), end]
    merged: dict[str, list[Any]] = {}
    for piece in reads.bucket_usage(session, team_id, bounds, now, stale_after):
        period = schedule.at(piece.start)
        slot = merged.setdefault(period.version_id, [period, 0, 0])
        slot[1] += piece.vcpu_ms
        slot[2] += piece.mib_ms
    return [PricedUsage(p, v, m) for p, v, m in merged.values()]
