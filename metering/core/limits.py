"""Limits: which limits a team has at an instant. Pure functions over immutable values.

Effective limits (`effective_limits`)
    1. Start from the plan's `PlanLimits` (the defaults are `DEFAULT_PLAN_LIMITS`).
    2. Every `LimitOverride` valid at `at` (start <= at < end, `None` = open) replaces the fields it
       sets. When several valid overrides set the same field, the one with the latest `start`
       wins (an open start counts as the earliest); on a tie the later one in the given sequence
       wins.
    3. Every `AddOn` valid at `at` (same window rule, end exclusive) adds its positive `delta` to
       its field, on top of the overridden value.

What a team may do with its limits is decided elsewhere in the pure core: admissions in
`metering.core.admission`, kill orders in `metering.core.kills`, threshold notifications in
`metering.core.notifications`, burn-rate projection in `metering.core.projection`. None of them
reads a clock (every function is told `at` or `now`) or knows HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Literal, cast, get_args

__all__ = [
    "DEFAULT_PLAN_LIMITS",
    "LIMIT_FIELDS",
    "LIMIT_MINIMUMS",
    "AddOn",
    "LimitField",
    "LimitOverride",
    "PlanLimits",
    "effective_limits",
    "require_aware",
]


def require_aware(name: str, moment: datetime | None) -> None:
    # Comparing naive with aware datetimes raises deep inside a policy check; fail at the edge.
    if moment is not None and moment.utcoffset() is None:
        raise ValueError(f"{name}: naive datetime, times must be timezone-aware UTC")


def _check_window(start: datetime | None, end: datetime | None) -> None:
    require_aware("start", start)
    require_aware("end", end)
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")


def _in_window(start: datetime | None, end: datetime | None, at: datetime) -> bool:
    # [start, end): an add-on "until the 1st" is no longer there on the 1st.
    return (start is None or start <= at) and (end is None or at < end)


def _least(settable: int) -> dict[str, int]:
    return {"least": settable}


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """A plan's (or a team's effective) limits; all integers, all >= 0.

    The one declaration of the limits: overrides, add-ons, the plan and override tables
    (`billing.plans.models`), the API's `LimitsOut` / `LimitsPatch` and the team read all take
    their fields from here (and a migration adds the column). `least` is the smallest value a
    plan version or an override may set (0 where none at all is a meaningful limit)."""

    max_execution_s: int = field(metadata=_least(1))
    concurrency: int = field(metadata=_least(0))
    starts_per_second: int = field(metadata=_least(0))
    max_vcpu: int = field(metadata=_least(1))
    max_memory_mib: int = field(metadata=_least(1))
    max_disk_mib: int = field(metadata=_least(0))

    def __post_init__(self) -> None:
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    def as_dict(self) -> dict[LimitField, int]:
        """The fields by name, e.g. for the dashboard's team view."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS}


# The names again, as a type: mypy and the API's add-on schema check a field's name against
# it. Python cannot derive a Literal from a class, so it is checked against `PlanLimits` here.
LimitField = Literal[
    "max_execution_s",
    "concurrency",
    "starts_per_second",
    "max_vcpu",
    "max_memory_mib",
    "max_disk_mib",
]
LIMIT_FIELDS = cast(tuple[LimitField, ...], tuple(f.name for f in fields(PlanLimits)))
if get_args(LimitField) != LIMIT_FIELDS:  # pragma: no cover - fails at import, on purpose
    raise TypeError(f"LimitField {get_args(LimitField)} differs from PlanLimits {LIMIT_FIELDS}")
LIMIT_MINIMUMS: Mapping[LimitField, int] = {
    cast(LimitField, f.name): f.metadata["least"] for f in fields(PlanLimits)}


DEFAULT_PLAN_LIMITS: dict[str, PlanLimits] = {
    "hobby": PlanLimits(
        max_execution_s=3_600,
        concurrency=20,
        starts_per_second=1,
        max_vcpu=8,
        max_memory_mib=8_192,
        max_disk_mib=10_240,
    ),
    "pro": PlanLimits(
        max_execution_s=86_400,
        concurrency=100,
        starts_per_second=5,
        max_vcpu=32,
        max_memory_mib=65_536,
        max_disk_mib=20_480,
    ),
    "enterprise": PlanLimits(
        max_execution_s=86_400,
        concurrency=1_100,
        starts_per_second=20,
        max_vcpu=32,
        max_memory_mib=131_072,
        max_disk_mib=51_200,
    ),
}


class LimitOverride:
    """A team's absolute value for some limits, valid in [start, end):
    `LimitOverride(concurrency=50, start=...)`; a limit not named (or None) is kept."""

    __slots__ = ("_values", "end", "start")

    def __init__(self, *, start: datetime | None = None, end: datetime | None = None,
                 **limits: int | None) -> None:
        _check_window(start, end)
        values: dict[LimitField, int] = {}
        for name, value in limits.items():
            if name not in LIMIT_FIELDS:
                raise ValueError(f"unknown limit field {name!r}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"override {name} must be an integer >= 0, got {value!r}")
            values[name] = value
        self._values = values
        self.start = start
        self.end = end

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LimitOverride) and (self._values, self.start, self.end) == (
            other._values, other.start, other.end)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self._values.items())), self.start, self.end))

    def __repr__(self) -> str:
        named = [f"{k}={v!r}" for k, v in self._values.items()]
        return f"LimitOverride({', '.join([*named, f'start={self.start!r}', f'end={self.end!r}'])})"

    def values(self) -> dict[LimitField, int]:
        """The fields this override sets."""
        return dict(self._values)

    def valid_at(self, at: datetime) -> bool:
        """Whether `at` lies in [start, end)."""
        return _in_window(self.start, self.end, at)


@dataclass(frozen=True, slots=True)
class AddOn:
    """A purchased extra on one limit (e.g. +100 concurrency), valid in [start, end)."""

    field: LimitField
    delta: int
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        _check_window(self.start, self.end)
        if self.field not in LIMIT_FIELDS:
            raise ValueError(f"unknown limit field {self.field!r}")
        # Positive only: an add-on never takes a limit away, which is what lets admission promise
        # that buying one cannot turn an admitted request into a refused one.
        if isinstance(self.delta, bool) or not isinstance(self.delta, int) or self.delta <= 0:
            raise ValueError(f"add-on delta must be a positive integer, got {self.delta!r}")

    def valid_at(self, at: datetime) -> bool:
        """Whether `at` lies in [start, end)."""
        return _in_window(self.start, self.end, at)


def effective_limits(
    plan: PlanLimits,
    overrides: Iterable[LimitOverride],
    addons: Iterable[AddOn],
    at: datetime,
) -> PlanLimits:
    """The limits in force at `at`: plan, then valid overrides (latest start wins), then add-ons."""
    require_aware("at", at)
    values = plan.as_dict()
    # Sort by start with open starts first; `sorted` is stable, so among equal starts the later
    # override in the given sequence is applied last and wins.
    valid = [override for override in overrides if override.valid_at(at)]
    valid.sort(key=lambda override: (override.start is not None, override.start or at))
    for override in valid:
        values.update(override.values())
    for addon in addons:
        if addon.valid_at(at):
            values[addon.field] += addon.delta
    return PlanLimits(**values)
