"""The limit policy: which limits a team has, whether it may start a sandbox, when to kill one.

Pure functions over immutable values; no I/O, no clock of its own (every function is told `at` or
`now`), so the same inputs always give the same answer and the repository layer decides what
"live" numbers to pass in.

Effective limits (`effective_limits`)
    1. Start from the plan's `PlanLimits` (the defaults are `DEFAULT_PLAN_LIMITS`).
    2. Every `LimitOverride` valid at `at` (start <= at < end, `None` = open) replaces the fields it
       sets. When several valid overrides set the same field, the one with the latest `start`
       wins (an open start counts as the earliest); on a tie the later one in the given sequence
       wins.
    3. Every `AddOn` valid at `at` (same window rule, end exclusive) adds its positive `delta` to
       its field, on top of the overridden value.

Admission (`decide_admission`), checked in this order; the first failing check is the answer:

    ====  =========================  ======  =============================================
    #     reason                     status  refused when
    ====  =========================  ======  =============================================
    1     team_blocked               402     the team is blocked (e.g. unpaid invoice)
    2     resources_exceed_plan      403     vcpu, then memory_mib, then disk_mib above cap
    3     duration_exceeds_plan      403     timeout_s above max_execution_s
    4     credit_exhausted           402     prepaid credit (live) <= 0
    5     spend_limit_reached        402     month-to-date spend >= the team's spend limit
    6     concurrency_limit          429     running + live leases >= concurrency
    7     start_rate_limited         429     admissions in the trailing second >= per-second
    ====  =========================  ======  =============================================

    Why this order: a blocked team is told so whatever else is wrong; then requests that can never
    succeed on this plan (403, retrying is pointless) come before money conditions (402, fixed by
    paying) which come before momentary load (429, fixed by waiting), so a client that retries on
    429 is never told to wait for something waiting cannot fix.

Kill orders (`kill_reasons`), most fundamental first: `team_blocked`, `credit_exhausted`,
`spend_limit_reached` (the same predicates as admission, so a team that may not start a sandbox
also may not keep one running), then `max_duration` (elapsed since the execution's start >= the
plan's `max_execution_s`).

Notifications: `credit_threshold_crossed` reports each percentage of a grant that a usage increase
newly reaches (used >= granted * pct / 100), so that splitting one increase into steps reports
every threshold exactly once in total.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Literal, Protocol, get_args

from metering.core.money import (
    MIB_PER_GIB,
    UnitPrices,
    add,
    div,
    fmt,
    fmt_minor,
    mul,
    round_minor,
)

__all__ = [
    "DEFAULT_PLAN_LIMITS",
    "KILL_REASONS",
    "LIMIT_FIELDS",
    "REFUSAL_STATUS",
    "AddOn",
    "Admission",
    "AdmissionRequest",
    "AdmissionState",
    "KillReason",
    "LimitField",
    "LimitOverride",
    "PlanLimits",
    "Refusal",
    "RefusalReason",
    "StartedExecution",
    "TeamStanding",
    "burn_rate_projection",
    "cost_rate_per_second",
    "credit_exhausted",
    "credit_threshold_crossed",
    "decide_admission",
    "effective_limits",
    "kill_reasons",
    "max_duration_deadline",
    "max_duration_reached",
    "spend_limit_reached",
]

LimitField = Literal[
    "max_execution_s",
    "concurrency",
    "starts_per_second",
    "max_vcpu",
    "max_memory_mib",
    "max_disk_mib",
]
LIMIT_FIELDS: tuple[LimitField, ...] = get_args(LimitField)

RefusalReason = Literal[
    "team_blocked",
    "resources_exceed_plan",
    "duration_exceeds_plan",
    "credit_exhausted",
    "spend_limit_reached",
    "concurrency_limit",
    "start_rate_limited",
]

# One table for reason -> HTTP status, in check order, so the API layer never re-derives it.
REFUSAL_STATUS: dict[RefusalReason, int] = {
    "team_blocked": 402,
    "resources_exceed_plan": 403,
    "duration_exceeds_plan": 403,
    "credit_exhausted": 402,
    "spend_limit_reached": 402,
    "concurrency_limit": 429,
    "start_rate_limited": 429,
}

KillReason = Literal["team_blocked", "credit_exhausted", "spend_limit_reached", "max_duration"]
KILL_REASONS: tuple[KillReason, ...] = get_args(KillReason)


def _require_aware(name: str, moment: datetime | None) -> None:
    # Comparing naive with aware datetimes raises deep inside a policy check; fail at the edge.
    if moment is not None and moment.utcoffset() is None:
        raise ValueError(f"{name}: naive datetime, times must be timezone-aware UTC")


def _check_window(start: datetime | None, end: datetime | None) -> None:
    _require_aware("start", start)
    _require_aware("end", end)
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")


def _in_window(start: datetime | None, end: datetime | None, at: datetime) -> bool:
    # [start, end): an add-on "until the 1st" is no longer there on the 1st.
    return (start is None or start <= at) and (end is None or at < end)


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """A plan's (or a team's effective) limits; all integers, all >= 0."""

    max_execution_s: int
    concurrency: int
    starts_per_second: int
    max_vcpu: int
    max_memory_mib: int
    max_disk_mib: int

    def __post_init__(self) -> None:
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    def as_dict(self) -> dict[LimitField, int]:
        """The fields by name, e.g. for the dashboard's team view."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS}


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


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """A team's absolute value for some limits (None = keep), valid in [start, end)."""

    max_execution_s: int | None = None
    concurrency: int | None = None
    starts_per_second: int | None = None
    max_vcpu: int | None = None
    max_memory_mib: int | None = None
    max_disk_mib: int | None = None
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        _check_window(self.start, self.end)
        for name, value in self.values().items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"override {name} must be an integer >= 0, got {value!r}")

    def values(self) -> dict[LimitField, int]:
        """The fields this override sets."""
        found: dict[LimitField, int] = {}
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                found[name] = value
        return found

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
    _require_aware("at", at)
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


# --------------------------------------------------------------------------- admission


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """What the orchestrator asks to start."""

    vcpu: int
    memory_mib: int
    disk_mib: int | None = None
    timeout_s: int | None = None

    def __post_init__(self) -> None:
        for name in ("vcpu", "memory_mib", "disk_mib", "timeout_s"):
            value = getattr(self, name)
            if value is None and name in ("disk_mib", "timeout_s"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class TeamStanding(Protocol):
    """The money-and-standing facts shared by admission and kill decisions.

    `credit_remaining` is live (running sandboxes' accrual up to now included) and is None on
    plans whose usage is not stopped by credit (pro, enterprise); `month_spend` is likewise live.
    """

    @property
    def blocked(self) -> bool: ...

    @property
    def credit_remaining(self) -> Decimal | None: ...

    @property
    def month_spend(self) -> Decimal: ...

    @property
    def spend_limit(self) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class AdmissionState:
    """The team's situation at the moment of the request (a `TeamStanding` plus load).

    `running` counts running, non-paused executions; `leases` counts live, unconsumed leases
    other than this sandbox's own (a retry of a live lease is answered before the policy runs);
    `starts_last_second` counts admissions granted in the trailing one-second window.
    """

    blocked: bool
    plan_code: str
    running: int
    leases: int
    starts_last_second: int
    credit_remaining: Decimal | None
    month_spend: Decimal
    spend_limit: Decimal | None
    currency: str = "usd"

    def __post_init__(self) -> None:
        for name in ("running", "leases", "starts_last_second"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Admission:
    """A yes, with the longest the sandbox may run."""

    max_duration_s: int

    def body(self) -> dict[str, object]:
        """The policy's part of the 200 answer (the lease fields are added by the caller)."""
        return {"admitted": True, "max_duration_s": self.max_duration_s}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A no: the reason, its HTTP status, the limit and the current value it was measured by.

    `limit` and `current` are ints for counts and sizes, exact decimal strings for money, and
    None for `team_blocked` (no number describes it). `field` names the request field that
    exceeded its cap for `resources_exceed_plan` (vcpu, memory_mib or disk_mib), else None.
    """

    reason: RefusalReason
    http_status: int
    limit: int | str | None
    current: int | str | None
    message: str
    field: str | None = None

    def body(self) -> dict[str, object]:
        """The contract's JSON body for the refusal."""
        return {
            "admitted": False,
            "reason": self.reason,
            "limit": self.limit,
            "current": self.current,
            "message": self.message,
        }


def _refuse(
    reason: RefusalReason,
    limit: int | str | None,
    current: int | str | None,
    message: str,
    field: str | None = None,
) -> Refusal:
    return Refusal(reason, REFUSAL_STATUS[reason], limit, current, message, field)


def _money(amount: Decimal, currency: str) -> str:
    text = fmt_minor(amount, currency)
    # A tiny negative balance rounds to "-0.00", which reads as a typo in a message.
    if text.startswith("-") and round_minor(amount, currency) == 0:
        text = text[1:]
    return f"{text} {currency.upper()}"


def credit_exhausted(credit_remaining: Decimal | None) -> bool:
    """Prepaid credit is used up (<= 0); never true on a plan without credit (None)."""
    return credit_remaining is not None and credit_remaining <= 0


def spend_limit_reached(month_spend: Decimal, spend_limit: Decimal | None) -> bool:
    """Month-to-date spend has reached the team's limit; never true without a limit."""
    return spend_limit is not None and month_spend >= spend_limit


def decide_admission(
    request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
) -> Admission | Refusal:
    """Admit or refuse a sandbox start; checks in the order of the module docstring."""
    plan = state.plan_code
    if state.blocked:
        return _refuse(
            "team_blocked",
            None,
            None,
            "The team is blocked (for example an unpaid invoice); no sandbox may start.",
        )

    caps: list[tuple[str, str, int | None, int]] = [
        ("vcpu", "vCPU", request.vcpu, limits.max_vcpu),
        ("memory_mib", "MiB of memory", request.memory_mib, limits.max_memory_mib),
        ("disk_mib", "MiB of disk", request.disk_mib, limits.max_disk_mib),
    ]
    for field, unit, asked, cap in caps:
        if asked is not None and asked > cap:
            return _refuse(
                "resources_exceed_plan",
                cap,
                asked,
                f"Requested {asked} {unit} ({field}) but the {plan} plan allows at most "
                f"{cap} per sandbox.",
                field,
            )

    # A plan (or override) allowing 0 s per execution admits nothing, timeout or not.
    if limits.max_execution_s < 1 or (
        request.timeout_s is not None and request.timeout_s > limits.max_execution_s
    ):
        return _refuse(
            "duration_exceeds_plan",
            limits.max_execution_s,
            request.timeout_s if request.timeout_s is not None else limits.max_execution_s,
            f"Requested a timeout of {request.timeout_s} s but the {plan} plan allows at most "
            f"{limits.max_execution_s} s per execution." if request.timeout_s is not None else
            f"The {plan} plan allows no execution time (at most 0 s per execution).",
        )

    if credit_exhausted(state.credit_remaining):
        assert state.credit_remaining is not None  # narrowed by credit_exhausted
        return _refuse(
            "credit_exhausted",
            "0",
            fmt(state.credit_remaining),
            f"Credit is exhausted: {_money(state.credit_remaining, state.currency)} remaining "
            f"(must be above 0) on the {plan} plan.",
        )

    if spend_limit_reached(state.month_spend, state.spend_limit):
        assert state.spend_limit is not None  # narrowed by spend_limit_reached
        return _refuse(
            "spend_limit_reached",
            fmt(state.spend_limit),
            fmt(state.month_spend),
            f"This month's spend of {_money(state.month_spend, state.currency)} has reached the "
            f"spend limit of {_money(state.spend_limit, state.currency)}.",
        )

    # Leases count because an admitted sandbox holds its slot before its created event arrives;
    # without them a burst of admissions would all see the same free slot.
    in_use = state.running + state.leases
    if in_use >= limits.concurrency:
        return _refuse(
            "concurrency_limit",
            limits.concurrency,
            in_use,
            f"{in_use} sandboxes are running or starting ({state.running} running, "
            f"{state.leases} starting); the limit is {limits.concurrency} concurrent.",
        )

    if state.starts_last_second >= limits.starts_per_second:
        return _refuse(
            "start_rate_limited",
            limits.starts_per_second,
            state.starts_last_second,
            f"{state.starts_last_second} sandboxes were started in the last second; the limit "
            f"is {limits.starts_per_second} per second.",
        )

    max_duration = limits.max_execution_s
    if request.timeout_s is not None:
        max_duration = min(max_duration, request.timeout_s)
    return Admission(max_duration_s=max_duration)


# --------------------------------------------------------------------------- kill orders


class StartedExecution(Protocol):
    """Anything with the start time of a running execution (created or resumed `time`)."""

    @property
    def started_at(self) -> datetime: ...


def max_duration_deadline(started_at: datetime, limits: PlanLimits) -> datetime:
    """The instant an execution started at `started_at` has used its plan's max duration."""
    return started_at + timedelta(seconds=limits.max_execution_s)


def max_duration_reached(started_at: datetime, limits: PlanLimits, now: datetime) -> bool:
    """Whether the execution has run for its full `max_execution_s` (reaching it is enough)."""
    _require_aware("started_at", started_at)
    _require_aware("now", now)
    return now >= max_duration_deadline(started_at, limits)


def kill_reasons(
    execution: StartedExecution,
    limits: PlanLimits,
    team: TeamStanding,
    now: datetime,
) -> list[KillReason]:
    """Why a running execution must be killed now, most fundamental first; empty = let it run.

    A kill order carries one reason: take the first. `limits` are the team's effective limits at
    `now`; `team` is its live standing (an `AdmissionState` will do).
    """
    reasons: list[KillReason] = []
    if team.blocked:
        reasons.append("team_blocked")
    if credit_exhausted(team.credit_remaining):
        reasons.append("credit_exhausted")
    if spend_limit_reached(team.month_spend, team.spend_limit):
        reasons.append("spend_limit_reached")
    if max_duration_reached(execution.started_at, limits, now):
        reasons.append("max_duration")
    return reasons


# --------------------------------------------------------------------------- credit and burn


def credit_threshold_crossed(
    granted: Decimal,
    used_before: Decimal,
    used_after: Decimal,
    thresholds: Sequence[int] = (50, 80, 100),
) -> list[int]:
    """The percentages of `granted` that usage newly reaches going from before to after.

    A threshold p is reached when used >= granted * p / 100; it is newly reached when that holds
    after and not before. Usage is expected never to decrease between calls; if it does, nothing
    is reported (a dip and re-rise would otherwise announce a threshold twice, so callers should
    still remember what they announced). Nothing is reported for a zero or negative grant, where
    percentages mean nothing. Returned ascending, each threshold once.
    """
    if granted <= 0 or used_after <= used_before:
        return []
    # Compare used * 100 with granted * p: exact, no division.
    before = mul(used_before, 100)
    after = mul(used_after, 100)
    crossed: list[int] = []
    for pct in sorted(set(thresholds)):
        mark = mul(granted, pct)
        if before < mark <= after:
            crossed.append(pct)
    return crossed


def cost_rate_per_second(allocations: Iterable[tuple[int, int]], prices: UnitPrices) -> Decimal:
    """What running sandboxes cost per second, from their (vcpu, memory_mib) allocations."""
    vcpu = 0
    memory_mib = 0
    for cpus, mib in allocations:
        vcpu += cpus
        memory_mib += mib
    return add(
        mul(prices.vcpu_second, vcpu),
        mul(prices.gib_second, div(memory_mib, MIB_PER_GIB)),
    )


_MICROSECONDS = Decimal(1_000_000)
_LATEST = datetime.max.replace(tzinfo=UTC)


def burn_rate_projection(
    credit_remaining: Decimal, rate_per_second: Decimal, now: datetime
) -> datetime | None:
    """When credit runs out at the current burn rate; None if it never does.

    Already exhausted (<= 0) -> `now`. No burn (rate <= 0) -> None. Otherwise the first
    microsecond at which remaining - rate * elapsed <= 0 (rounded up, matching the kill rule
    "credit <= 0"). A date beyond the calendar's end is reported as None: never, in practice.
    """
    _require_aware("now", now)
    if credit_remaining <= 0:
        return now
    if rate_per_second <= 0:
        return None
    micros = mul(div(credit_remaining, rate_per_second), _MICROSECONDS)
    whole = int(micros.to_integral_value(rounding=ROUND_CEILING))
    room = (_LATEST - now) // timedelta(microseconds=1)
    if whole > room:
        return None
    return now + timedelta(microseconds=whole)
