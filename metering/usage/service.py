"""Usage as metering answers it: buckets over time and usage per price version, exact
integers priced by the version in force when they happened.

Prices come from the installed `Billing` (plan versions), see `metering.plugins`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

from sqlalchemy.orm import Session

from metering import plugins
from metering.core.clock import from_ms, month_start, next_month_start, to_ms, utc_now
from metering.core.money import add
from metering.core.pricing import PricePeriod, PriceSchedule
from metering.errors import BadRequest
from metering.usage import repository as repo


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
    schedule = schedule or schedule_for(session, team_id, bounds[0], bounds[-1])
    cuts = schedule.cuts(bounds[0], bounds[-1])
    fine = sorted(set(bounds) | set(cuts))
    pieces = repo.bucket_usage(session, team_id, fine, now, stale_after)
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
    schedule = schedule or schedule_for(session, team_id, start, end)
    bounds = [start, *schedule.cuts(start, end), end]
    merged: dict[str, list[Any]] = {}
    for piece in repo.bucket_usage(session, team_id, bounds, now, stale_after):
        period = schedule.at(piece.start)
        slot = merged.setdefault(period.version_id, [period, 0, 0])
        slot[1] += piece.vcpu_ms
        slot[2] += piece.mib_ms
    return [PricedUsage(p, v, m) for p, v, m in merged.values()]
