"""Which plan version is in force when: pure derivations from plan versions and a team's plan
assignments. A team is on a plan from an assignment's instant until the next; a plan's
version is in force from its `effective_at` until the next. Before a team's first
assignment, its first plan applies (usage is never unpriced)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from metering.core.limits import PlanLimits
from metering.core.money import UnitPrices
from metering.core.pricing import PricePeriod, PriceSchedule


@dataclass(frozen=True, slots=True)
class Version:
    id: str
    plan_code: str
    effective_at: datetime
    currency: str
    monthly_fee: Decimal
    one_time_credit: Decimal
    credit_enforced: bool
    minimum_commitment: Decimal
    vcpu_second_price: Decimal
    gib_second_price: Decimal
    limits: PlanLimits

    @property
    def prices(self) -> UnitPrices:
        return UnitPrices(self.vcpu_second_price, self.gib_second_price, self.currency)


@dataclass(frozen=True, slots=True)
class Assignment:
    plan_code: str
    effective_at: datetime


@dataclass(frozen=True, slots=True)
class VersionSpan:
    """A version in force for a team over [start, end) (end None: open)."""

    version: Version
    start: datetime
    end: datetime | None


def version_at(versions: Sequence[Version], moment: datetime) -> Version:
    """The version of one plan in force at `moment` (the first one before any)."""
    ordered = sorted(versions, key=lambda v: v.effective_at)
    if not ordered:
        raise ValueError("a plan needs at least one version")
    index = bisect_right([v.effective_at for v in ordered], moment) - 1
    return ordered[max(index, 0)]


def plan_at(assignments: Sequence[Assignment], moment: datetime, default: str) -> str:
    ordered = sorted(assignments, key=lambda a: a.effective_at)
    current = ordered[0].plan_code if ordered else default
    for assignment in ordered:
        if assignment.effective_at <= moment:
            current = assignment.plan_code
    return current


def spans(
    assignments: Sequence[Assignment], versions: dict[str, list[Version]], default: str,
    start: datetime, end: datetime,
) -> list[VersionSpan]:
    """The versions in force for a team over [start, end), in order, clipped to it."""
    ordered = sorted(assignments, key=lambda a: a.effective_at)
    if not ordered:
        ordered = [Assignment(default, start)]
    # Plan intervals: the first assignment also covers all time before it.
    plan_intervals: list[tuple[str, datetime | None, datetime | None]] = []
    for i, assignment in enumerate(ordered):
        lo = None if i == 0 else assignment.effective_at
        hi = ordered[i + 1].effective_at if i + 1 < len(ordered) else None
        plan_intervals.append((assignment.plan_code, lo, hi))
    out: list[VersionSpan] = []
    for plan_code, lo, hi in plan_intervals:
        lo_c = start if lo is None else max(lo, start)
        hi_c = end if hi is None else min(hi, end)
        if hi_c <= lo_c:
            continue
        plan_versions = sorted(versions.get(plan_code, []), key=lambda v: v.effective_at)
        if not plan_versions:
            raise ValueError(f"plan {plan_code!r} has no versions")
        for j, version in enumerate(plan_versions):
            v_lo = None if j == 0 else version.effective_at
            v_hi = plan_versions[j + 1].effective_at if j + 1 < len(plan_versions) else None
            s = lo_c if v_lo is None else max(v_lo, lo_c)
            e = hi_c if v_hi is None else min(v_hi, hi_c)
            if e > s:
                out.append(VersionSpan(version, s, e))
    return out


def price_schedule(
    assignments: Sequence[Assignment], versions: dict[str, list[Version]], default: str,
    start: datetime, end: datetime,
) -> PriceSchedule:
    """Price periods for [start, end): the first period also prices anything before."""
    found = spans(assignments, versions, default, start, end)
    if not found:
        first = version_at(versions[default], start)
        return PriceSchedule((PricePeriod(start, first.prices, first.id, first.plan_code),))
    periods = [PricePeriod(s.start, s.version.prices, s.version.id, s.version.plan_code)
               for s in found]
    merged = [periods[0]]
    for period in periods[1:]:
        if period.version_id != merged[-1].version_id:
            merged.append(period)
    return PriceSchedule(tuple(merged))
