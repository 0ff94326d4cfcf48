"""Admission: whether a team may start a sandbox now. Pure; no clock, no I/O, no HTTP.

Checked in this order; the first failing check is the answer:

    ====  =========================  =============================================
    #     reason                     refused when
    ====  =========================  =============================================
    1     team_blocked               the team is blocked (e.g. unpaid invoice)
    2     resources_exceed_plan      vcpu, then memory_mib, then disk_mib above cap
    3     duration_exceeds_plan      timeout_s above max_execution_s
    4     credit_exhausted           prepaid credit (live) <= 0
    5     spend_limit_reached        month-to-date spend >= the team's spend limit
    6     concurrency_limit          running + live leases >= concurrency
    7     start_rate_limited         admissions in the trailing second >= per-second
    ====  =========================  =============================================

    Why this order: a blocked team is told so whatever else is wrong; then requests that can never
    succeed on this plan (retrying is pointless) come before money conditions (fixed by paying)
    which come before momentary load (fixed by waiting), so a client that retries on load is
    never told to wait for something waiting cannot fix. The HTTP status of each reason is the
    admissions endpoint's business (`metering.admissions.schemas.REFUSAL_STATUS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from metering.core.limits import PlanLimits
from metering.core.money import fmt, fmt_minor, round_minor

__all__ = [
    "Admission",
    "AdmissionRequest",
    "AdmissionState",
    "Refusal",
    "RefusalReason",
    "TeamStanding",
    "credit_exhausted",
    "decide_admission",
    "spend_limit_reached",
]

RefusalReason = Literal[
    "team_blocked",
    "resources_exceed_plan",
    "duration_exceeds_plan",
    "credit_exhausted",
    "spend_limit_reached",
    "concurrency_limit",
    "start_rate_limited",
]


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
    """A no: the reason, the limit and the current value it was measured by.

    `limit` and `current` are ints for counts and sizes, exact decimal strings for money, and
    None for `team_blocked` (no number describes it). `field` names the request field that
    exceeded its cap for `resources_exceed_plan` (vcpu, memory_mib or disk_mib), else None.
    """

    reason: RefusalReason
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
    return Refusal(reason, limit, current, message, field)


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


def _blocked(request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
             ) -> Refusal | None:
    if not state.blocked:
        return None
    return _refuse(
        "team_blocked", None, None,
        "The team is blocked (for example an unpaid invoice); no sandbox may start.")


def _resources(request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
               ) -> Refusal | None:
    caps: list[tuple[str, str, int | None, int]] = [
        ("vcpu", "vCPU", request.vcpu, limits.max_vcpu),
        ("memory_mib", "MiB of memory", request.memory_mib, limits.max_memory_mib),
        ("disk_mib", "MiB of disk", request.disk_mib, limits.max_disk_mib),
    ]
    for field, unit, asked, cap in caps:
        if asked is not None and asked > cap:
            return _refuse(
                "resources_exceed_plan", cap, asked,
                f"Requested {asked} {unit} ({field}) but the {state.plan_code} plan allows at "
                f"most {cap} per sandbox.",
                field)
    return None


def _duration(request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
              ) -> Refusal | None:
    # A plan (or override) allowing 0 s per execution admits nothing, timeout or not.
    if limits.max_execution_s >= 1 and (
            request.timeout_s is None or request.timeout_s <= limits.max_execution_s):
        return None
    plan = state.plan_code
    return _refuse(
        "duration_exceeds_plan",
        limits.max_execution_s,
        request.timeout_s if request.timeout_s is not None else limits.max_execution_s,
        f"Requested a timeout of {request.timeout_s} s but the {plan} plan allows at most "
        f"{limits.max_execution_s} s per execution." if request.timeout_s is not None else
        f"The {plan} plan allows no execution time (at most 0 s per execution).")


def _credit(request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
            ) -> Refusal | None:
    if not credit_exhausted(state.credit_remaining):
        return None
    assert state.credit_remaining is not None  # narrowed by credit_exhausted
    return _refuse(
        "credit_exhausted", "0", fmt(state.credit_remaining),
        f"Credit is exhausted: {_money(state.credit_remaining, state.currency)} remaining "
        f"(must be above 0) on the {state.plan_code} plan.")


def _spend(request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
           ) -> Refusal | None:
    if not spend_limit_reached(state.month_spend, state.spend_limit):
        return None
    assert state.spend_limit is not None  # narrowed by spend_limit_reached
    return _refuse(
        "spend_limit_reached", fmt(state.spend_limit), fmt(state.month_spend),
        f"This month's spend of {_money(state.month_spend, state.currency)} has reached the "
        f"spend limit of {_money(state.spend_limit, state.currency)}.")


def _concurrency(request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
                 ) -> Refusal | None:
    # Leases count because an admitted sandbox holds its slot before its created event arrives;
    # without them a burst of admissions would all see the same free slot.
    in_use = state.running + state.leases
    if in_use < limits.concurrency:
        return None
    return _refuse(
        "concurrency_limit", limits.concurrency, in_use,
        f"{in_use} sandboxes are running or starting ({state.running} running, "
        f"{state.leases} starting); the limit is {limits.concurrency} concurrent.")


def _start_rate(request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
                ) -> Refusal | None:
    if state.starts_last_second < limits.starts_per_second:
        return None
    return _refuse(
        "start_rate_limited", limits.starts_per_second, state.starts_last_second,
        f"{state.starts_last_second} sandboxes were started in the last second; the limit "
        f"is {limits.starts_per_second} per second.")


# In the order of the module docstring: the first refusal is the answer.
_CHECKS = (_blocked, _resources, _duration, _credit, _spend, _concurrency, _start_rate)


def decide_admission(
    request: AdmissionRequest, limits: PlanLimits, state: AdmissionState
) -> Admission | Refusal:
    """Admit or refuse a sandbox start; checks in the order of the module docstring."""
    for check in _CHECKS:
        refusal = check(request, limits, state)
        if refusal is not None:
            return refusal
    max_duration = limits.max_execution_s
    if request.timeout_s is not None:
        max_duration = min(max_duration, request.timeout_s)
    return Admission(max_duration_s=max_duration)
