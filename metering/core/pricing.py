"""Price schedules: which unit prices were in force when, for a team.

Usage is priced by the price version in force when it happened, so a reader cuts usage at the
schedule's change points and prices each piece by the version in force at its start.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime

from metering.core.money import UnitPrices


@dataclass(frozen=True, slots=True)
class PricePeriod:
    start: datetime
    prices: UnitPrices
    version_id: str = "default"
    plan_code: str = "default"


@dataclass(frozen=True, slots=True)
class PriceSchedule:
    """Price periods sorted by start; the first applies to all earlier time too."""

    periods: tuple[PricePeriod, ...]

    def __post_init__(self) -> None:
        if not self.periods:
            raise ValueError("a price schedule needs at least one period")

    def cuts(self, start: datetime, end: datetime) -> list[datetime]:
        """Change points strictly inside [start, end)."""
        return [p.start for p in self.periods[1:] if start < p.start < end]

    def at(self, moment: datetime) -> PricePeriod:
        starts = [p.start for p in self.periods]
        index = max(bisect_right(starts, moment) - 1, 0)
        return self.periods[index]


def constant(prices: UnitPrices) -> PriceSchedule:
    from metering.core.clock import from_ms

    return PriceSchedule((PricePeriod(from_ms(0), prices),))
