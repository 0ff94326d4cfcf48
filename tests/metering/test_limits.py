"""The limit policy: effective limits, admission decisions, kill reasons, thresholds, burn rate."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.admissions.schemas import REFUSAL_STATUS
from metering.core.admission import (
    Admission,
    AdmissionRequest,
    AdmissionState,
    Refusal,
    decide_admission,
)
from metering.core.kills import kill_reasons, max_duration_deadline
from metering.core.limits import (
    DEFAULT_PLAN_LIMITS,
    LIMIT_FIELDS,
    AddOn,
    LimitOverride,
    PlanLimits,
    effective_limits,
)
from metering.core.money import UnitPrices
from metering.core.notifications import credit_threshold_crossed
from metering.core.projection import burn_rate_projection, cost_rate_per_second

HOBBY = DEFAULT_PLAN_LIMITS["hobby"]
PRO = DEFAULT_PLAN_LIMITS["pro"]
ENTERPRISE = DEFAULT_PLAN_LIMITS["enterprise"]
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 3, 10, 15, 2, tzinfo=UTC)


def hobby_state(**changes: Any) -> AdmissionState:
    base = AdmissionState(
        blocked=False,
        plan_code="hobby",
        running=0,
        leases=0,
        starts_last_second=0,
        credit_remaining=Decimal("100"),
        month_spend=Decimal("0"),
        spend_limit=None,
    )
    return replace(base, **changes)


def refused(result: Admission | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


SMALL = AdmissionRequest(vcpu=2, memory_mib=1024)


# --------------------------------------------------------------------------- plan defaults


def test_default_plans_match_the_contract() -> None:
    assert PlanLimits(3600, 20, 1, 8, 8192, 10240) == HOBBY
    assert PlanLimits(86400, 100, 5, 32, 65536, 20480) == PRO
    assert PlanLimits(86400, 1100, 20, 32, 131072, 51200) == ENTERPRISE


def test_limits_reject_negative_and_addons_reject_non_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        replace(HOBBY, concurrency=-1)
    with pytest.raises(ValueError, match="positive"):
        AddOn("concurrency", 0)
    with pytest.raises(ValueError, match="unknown"):
        AddOn("gpus", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="after start"):
        AddOn("concurrency", 1, start=DEC_1, end=NOV_1)
    with pytest.raises(ValueError, match="naive"):
        LimitOverride(concurrency=5, start=datetime(2026, 11, 1))


# --------------------------------------------------------------------------- effective limits


def test_addon_applies_only_inside_its_window_end_exclusive() -> None:
    addon = AddOn("concurrency", 100, start=NOV_1, end=DEC_1)
    before = NOV_1 - timedelta(microseconds=1)
    last = DEC_1 - timedelta(microseconds=1)
    assert effective_limits(HOBBY, [], [addon], before).concurrency == 20
    assert effective_limits(HOBBY, [], [addon], NOV_1).concurrency == 120
    assert effective_limits(HOBBY, [], [addon], last).concurrency == 120
    assert effective_limits(HOBBY, [], [addon], DEC_1).concurrency == 20


def test_open_ended_addons_and_addons_stack() -> None:
    addons = [AddOn("concurrency", 100), AddOn("concurrency", 5, start=NOV_1)]
    assert effective_limits(PRO, [], addons, NOW).concurrency == 205
    assert effective_limits(PRO, [], addons, NOV_1 - timedelta(days=1)).concurrency == 200


def test_override_replaces_only_its_fields_then_addons_add() -> None:
    override = LimitOverride(concurrency=50, max_vcpu=16, start=NOV_1)
    addon = AddOn("concurrency", 100, start=NOV_1, end=DEC_1)
    limits = effective_limits(HOBBY, [override], [addon], NOW)
    assert limits == replace(HOBBY, concurrency=150, max_vcpu=16)
    # After the add-on ends, the override stays (it has no end).
    assert effective_limits(HOBBY, [override], [addon], DEC_1).concurrency == 50


def test_latest_starting_override_wins_per_field() -> None:
    early = LimitOverride(concurrency=30, max_vcpu=12, start=NOV_1)
    late = LimitOverride(concurrency=40, start=NOV_1 + timedelta(days=1))
    open_start = LimitOverride(concurrency=99, max_memory_mib=16384)
    limits = effective_limits(HOBBY, [late, open_start, early], [], NOW)
    assert limits.concurrency == 40  # latest start
    assert limits.max_vcpu == 12  # only `early` sets it
    assert limits.max_memory_mib == 16384  # only the open one sets it
    # Before `late` starts, `early` beats the open-start override.
    assert effective_limits(HOBBY, [late, open_start, early], [], NOV_1).concurrency == 30


def test_equal_starts_the_later_override_wins_and_expired_ones_do_not_apply() -> None:
    first = LimitOverride(concurrency=30, start=NOV_1)
    second = LimitOverride(concurrency=35, start=NOV_1)
    expired = LimitOverride(concurrency=500, start=NOV_1 + timedelta(days=1), end=NOW)
    assert effective_limits(HOBBY, [first, second, expired], [], NOW).concurrency == 35
    assert effective_limits(HOBBY, [second, first], [], NOW).concurrency == 30


# --------------------------------------------------------------------------- admission


def test_admits_with_plan_max_or_the_shorter_timeout() -> None:
    assert decide_admission(SMALL, HOBBY, hobby_state()) == Admission(max_duration_s=3600)
    with_timeout = AdmissionRequest(vcpu=2, memory_mib=1024, timeout_s=300)
    assert decide_admission(with_timeout, HOBBY, hobby_state()) == Admission(300)
    at_cap = AdmissionRequest(vcpu=8, memory_mib=8192, disk_mib=10240, timeout_s=3600)
    assert decide_admission(at_cap, HOBBY, hobby_state()) == Admission(3600)


def test_team_blocked() -> None:
    refusal = refused(decide_admission(SMALL, HOBBY, hobby_state(blocked=True)))
    assert (refusal.reason, REFUSAL_STATUS[refusal.reason]) == ("team_blocked", 402)
    assert refusal.limit is None and refusal.current is None
    assert "blocked" in refusal.message
    assert refusal.body() == {
        "admitted": False,
        "reason": "team_blocked",
        "limit": None,
        "current": None,
        "message": refusal.message,
    }


@pytest.mark.parametrize(
    ("request_", "field", "limit", "current"),
    [
        (AdmissionRequest(vcpu=9, memory_mib=1024), "vcpu", 8, 9),
        (AdmissionRequest(vcpu=2, memory_mib=8193), "memory_mib", 8192, 8193),
        (AdmissionRequest(vcpu=2, memory_mib=1024, disk_mib=20480), "disk_mib", 10240, 20480),
        # Several caps exceeded: the first in order (vcpu, memory, disk) is named.
        (AdmissionRequest(vcpu=9, memory_mib=9000, disk_mib=20480), "vcpu", 8, 9),
        (AdmissionRequest(vcpu=8, memory_mib=9000, disk_mib=20480), "memory_mib", 8192, 9000),
    ],
)
def test_resources_exceed_plan(
    request_: AdmissionRequest, field: str, limit: int, current: int
) -> None:
    refusal = refused(decide_admission(request_, HOBBY, hobby_state()))
    assert (refusal.reason, REFUSAL_STATUS[refusal.reason]) == ("resources_exceed_plan", 403)
    assert (refusal.field, refusal.limit, refusal.current) == (field, limit, current)
    assert field in refusal.message and str(limit) in refusal.message
    assert str(current) in refusal.message and "hobby" in refusal.message


def test_duration_exceeds_plan() -> None:
    request = AdmissionRequest(vcpu=2, memory_mib=1024, timeout_s=3601)
    refusal = refused(decide_admission(request, HOBBY, hobby_state()))
    assert (refusal.reason, REFUSAL_STATUS[refusal.reason]) == ("duration_exceeds_plan", 403)
    assert (refusal.limit, refusal.current) == (3600, 3601)
    assert "3601" in refusal.message and "3600" in refusal.message


@pytest.mark.parametrize("remaining", ["0", "-0.37", "-0.0000001"])
def test_credit_exhausted(remaining: str) -> None:
    state = hobby_state(credit_remaining=Decimal(remaining))
    refusal = refused(decide_admission(SMALL, HOBBY, state))
    assert (refusal.reason, REFUSAL_STATUS[refusal.reason]) == ("credit_exhausted", 402)
    assert (refusal.limit, refusal.current) == ("0", remaining)
    assert "USD" in refusal.message and "-0.00" not in refusal.message


def test_credit_is_ignored_on_plans_without_credit() -> None:
    state = hobby_state(plan_code="pro", credit_remaining=None, month_spend=Decimal("5000"))
    assert isinstance(decide_admission(SMALL, PRO, state), Admission)
    positive = hobby_state(credit_remaining=Decimal("0.0000001"))
    assert isinstance(decide_admission(SMALL, HOBBY, positive), Admission)


def test_spend_limit_reached() -> None:
    state = hobby_state(
        plan_code="pro",
        credit_remaining=None,
        month_spend=Decimal("500.004"),
        spend_limit=Decimal("500"),
    )
    refusal = refused(decide_admission(SMALL, PRO, state))
    assert (refusal.reason, REFUSAL_STATUS[refusal.reason]) == ("spend_limit_reached", 402)
    assert (refusal.limit, refusal.current) == ("500", "500.004")
    assert "500.00 USD" in refusal.message
    below = replace(state, month_spend=Decimal("499.99"))
    assert isinstance(decide_admission(SMALL, PRO, below), Admission)
    exactly = replace(state, month_spend=Decimal("500.00"))
    assert refused(decide_admission(SMALL, PRO, exactly)).reason == "spend_limit_reached"


def test_concurrency_limit_counts_running_and_leases() -> None:
    refusal = refused(decide_admission(SMALL, HOBBY, hobby_state(running=15, leases=5)))
    assert (refusal.reason, REFUSAL_STATUS[refusal.reason]) == ("concurrency_limit", 429)
    assert (refusal.limit, refusal.current) == (20, 20)
    assert "20" in refusal.message
    assert isinstance(decide_admission(SMALL, HOBBY, hobby_state(running=15, leases=4)), Admission)


def test_start_rate_limited() -> None:
    refusal = refused(decide_admission(SMALL, HOBBY, hobby_state(starts_last_second=1)))
    assert (refusal.reason, REFUSAL_STATUS[refusal.reason]) == ("start_rate_limited", 429)
    assert (refusal.limit, refusal.current) == (1, 1)
    assert "per second" in refusal.message


def test_blocked_beats_everything() -> None:
    everything_wrong = hobby_state(
        blocked=True,
        running=20,
        leases=5,
        starts_last_second=9,
        credit_remaining=Decimal("-1"),
        month_spend=Decimal("10"),
        spend_limit=Decimal("1"),
    )
    huge = AdmissionRequest(vcpu=64, memory_mib=999999, disk_mib=999999, timeout_s=999999)
    assert refused(decide_admission(huge, HOBBY, everything_wrong)).reason == "team_blocked"


def test_precedence_follows_the_documented_order() -> None:
    huge = AdmissionRequest(vcpu=64, memory_mib=1024, timeout_s=999999)
    long = AdmissionRequest(vcpu=2, memory_mib=1024, timeout_s=999999)
    broke = dict(credit_remaining=Decimal("0"), month_spend=Decimal("10"), spend_limit=Decimal(1))
    busy = dict(running=20, starts_last_second=5)
    state = hobby_state(**broke, **busy)
    # Resource caps come before duration, money, and concurrency.
    assert refused(decide_admission(huge, HOBBY, state)).reason == "resources_exceed_plan"
    assert refused(decide_admission(long, HOBBY, state)).reason == "duration_exceeds_plan"
    assert refused(decide_admission(SMALL, HOBBY, state)).reason == "credit_exhausted"
    no_credit_issue = replace(state, credit_remaining=Decimal(1))
    assert refused(decide_admission(SMALL, HOBBY, no_credit_issue)).reason == (
        "spend_limit_reached"
    )
    only_busy = replace(no_credit_issue, spend_limit=None)
    assert refused(decide_admission(SMALL, HOBBY, only_busy)).reason == "concurrency_limit"
    only_rate = replace(only_busy, running=0)
    assert refused(decide_admission(SMALL, HOBBY, only_rate)).reason == "start_rate_limited"
    assert list(REFUSAL_STATUS) == [
        "team_blocked",
        "resources_exceed_plan",
        "duration_exceeds_plan",
        "credit_exhausted",
        "spend_limit_reached",
        "concurrency_limit",
        "start_rate_limited",
    ]


def test_addon_lifts_a_concurrency_refusal_inside_its_window_only() -> None:
    addon = AddOn("concurrency", 100, start=NOV_1, end=DEC_1)
    state = hobby_state(running=20)
    inside = effective_limits(HOBBY, [], [addon], NOW)
    assert isinstance(decide_admission(SMALL, inside, state), Admission)
    after = effective_limits(HOBBY, [], [addon], DEC_1)
    assert refused(decide_admission(SMALL, after, state)).reason == "concurrency_limit"


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="vcpu"):
        AdmissionRequest(vcpu=0, memory_mib=1024)
    with pytest.raises(ValueError, match="timeout_s"):
        AdmissionRequest(vcpu=1, memory_mib=1024, timeout_s=0)
    with pytest.raises(ValueError, match="leases"):
        hobby_state(leases=-1)


# --------------------------------------------------------------------------- kill reasons


@dataclass(frozen=True)
class Running:
    started_at: datetime


def test_max_duration_is_due_when_reached() -> None:
    execution = Running(started_at=NOW)
    standing = hobby_state()
    deadline = max_duration_deadline(NOW, HOBBY)
    assert deadline == NOW + timedelta(hours=1)
    assert kill_reasons(execution, HOBBY, standing, deadline - timedelta(milliseconds=1)) == []
    assert kill_reasons(execution, HOBBY, standing, deadline) == ["max_duration"]
    # Pro allows 24 h.
    assert kill_reasons(execution, PRO, replace(standing, credit_remaining=None), deadline) == []
    # A start in the future (clock skew, early event) is never overdue.
    assert kill_reasons(Running(NOW + timedelta(minutes=5)), HOBBY, standing, NOW) == []


def test_team_wide_kill_reasons_in_order() -> None:
    execution = Running(started_at=NOW - timedelta(hours=2))
    everything = hobby_state(
        blocked=True,
        credit_remaining=Decimal("-0.01"),
        month_spend=Decimal("7"),
        spend_limit=Decimal("7"),
    )
    assert kill_reasons(execution, HOBBY, everything, NOW) == [
        "team_blocked",
        "credit_exhausted",
        "spend_limit_reached",
        "max_duration",
    ]
    fresh = Running(started_at=NOW)
    assert kill_reasons(fresh, HOBBY, hobby_state(credit_remaining=Decimal(0)), NOW) == [
        "credit_exhausted"
    ]
    # No credit on pro: a negative "remaining" never kills, only the spend limit does.
    pro = hobby_state(plan_code="pro", credit_remaining=None, month_spend=Decimal("999"))
    assert kill_reasons(fresh, PRO, pro, NOW) == []
    assert kill_reasons(fresh, PRO, replace(pro, spend_limit=Decimal("999")), NOW) == [
        "spend_limit_reached"
    ]


# --------------------------------------------------------------------------- thresholds


def test_credit_thresholds_worked_examples() -> None:
    granted = Decimal("100")
    assert credit_threshold_crossed(granted, Decimal("0"), Decimal("49.99")) == []
    assert credit_threshold_crossed(granted, Decimal("49.99"), Decimal("50")) == [50]
    assert credit_threshold_crossed(granted, Decimal("50"), Decimal("79")) == []
    assert credit_threshold_crossed(granted, Decimal("10"), Decimal("120")) == [50, 80, 100]
    assert credit_threshold_crossed(granted, Decimal("100"), Decimal("150")) == []
    # Usage going down, or no grant at all, reports nothing.
    assert credit_threshold_crossed(granted, Decimal("90"), Decimal("10")) == []
    assert credit_threshold_crossed(Decimal(0), Decimal(0), Decimal(5)) == []
    assert credit_threshold_crossed(granted, Decimal(0), Decimal(30), thresholds=(25,)) == [25]


# --------------------------------------------------------------------------- burn rate


def test_cost_rate_and_projection() -> None:
    prices = UnitPrices(vcpu_second=Decimal("0.000014"), gib_second=Decimal("0.0000045"))
    rate = cost_rate_per_second([(2, 1024), (2, 1024)], prices)
    assert rate == Decimal("0.000065")  # 4 * 0.000014 + 2 * 0.0000045
    projected = burn_rate_projection(Decimal("0.65"), rate, NOW)
    assert projected == NOW + timedelta(seconds=10_000)
    # Non-terminating quotient rounds up to the first microsecond at which credit is gone.
    assert burn_rate_projection(Decimal(1), Decimal(3), NOW) == NOW + timedelta(
        microseconds=333_334
    )
    assert burn_rate_projection(Decimal("0"), rate, NOW) == NOW
    assert burn_rate_projection(Decimal("-3"), rate, NOW) == NOW
    assert burn_rate_projection(Decimal("10"), Decimal(0), NOW) is None
    assert burn_rate_projection(Decimal("1e30"), Decimal("1e-30"), NOW) is None


# --------------------------------------------------------------------------- properties
# Small integers on purpose: limits, requests and loads drawn from the same narrow range land on
# the boundaries (equal to a cap, one over) far more often than realistic magnitudes would.
SMALL_INT = st.integers(0, 12)
MOMENTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
)
MONEY = st.decimals(min_value=-50, max_value=50, places=2)


@st.composite
def plan_limits(draw: st.DrawFn) -> PlanLimits:
    return PlanLimits(**{name: draw(SMALL_INT) for name in LIMIT_FIELDS})


@st.composite
def windows(draw: st.DrawFn) -> tuple[datetime | None, datetime | None]:
    start = draw(st.none() | MOMENTS)
    end = draw(st.none() | MOMENTS)
    if start is not None and end is not None:
        if end == start:
            end = start + timedelta(seconds=1)
        elif end < start:
            start, end = end, start
    return start, end


@st.composite
def addons(draw: st.DrawFn) -> AddOn:
    start, end = draw(windows())
    return AddOn(draw(st.sampled_from(LIMIT_FIELDS)), draw(st.integers(1, 4)), start, end)


@st.composite
def overrides(draw: st.DrawFn) -> LimitOverride:
    start, end = draw(windows())
    fields = draw(st.sets(st.sampled_from(LIMIT_FIELDS), max_size=3))
    return LimitOverride(start=start, end=end, **{name: draw(SMALL_INT) for name in fields})


def near(draw: st.DrawFn, cap: int, lowest: int) -> int:
    """A value on or just around `cap`, where an off-by-one in a comparison would show.

    Weighted to stay within the cap, so that requests that pass every other check are common.
    """
    return max(lowest, cap + draw(st.sampled_from([-2, -1, -1, 0, 0, 0, 1])))


@st.composite
def requests(draw: st.DrawFn, limits: PlanLimits) -> AdmissionRequest:
    return AdmissionRequest(
        vcpu=near(draw, limits.max_vcpu, 1),
        memory_mib=near(draw, limits.max_memory_mib, 1),
        disk_mib=draw(st.none() | st.just(near(draw, limits.max_disk_mib, 1))),
        timeout_s=draw(st.none() | st.just(near(draw, limits.max_execution_s, 1))),
    )


@st.composite
def states(draw: st.DrawFn, limits: PlanLimits, healthy: bool = False) -> AdmissionState:
    # `healthy`: no block and no money trouble, so the decision turns on the limits alone.
    in_use = near(draw, limits.concurrency, 0)
    leases = draw(st.integers(0, in_use))
    return AdmissionState(
        blocked=False if healthy else draw(st.sampled_from([False, False, False, True])),
        plan_code="hobby",
        running=in_use - leases,
        leases=leases,
        starts_last_second=near(draw, limits.starts_per_second, 0),
        credit_remaining=None if healthy else draw(st.none() | MONEY),
        month_spend=draw(MONEY),
        spend_limit=None if healthy else draw(st.none() | MONEY),
    )


@settings(max_examples=150, deadline=None)
@given(plan_limits(), st.data())
def test_never_admits_at_or_over_concurrency(limits: PlanLimits, data: st.DataObject) -> None:
    request = data.draw(requests(limits))
    state = data.draw(states(limits))
    result = decide_admission(request, limits, state)
    if state.running + state.leases >= limits.concurrency:
        assert isinstance(result, Refusal)
    if isinstance(result, Refusal):
        assert result.reason in REFUSAL_STATUS  # every refusal has its HTTP status
    else:
        # An admission respects every cap it was measured by.
        assert not state.blocked
        assert state.running + state.leases < limits.concurrency
        assert state.starts_last_second < limits.starts_per_second
        assert 1 <= result.max_duration_s <= limits.max_execution_s
        if request.timeout_s is not None:
            assert result.max_duration_s == request.timeout_s


@settings(max_examples=150, deadline=None)
@given(
    plan_limits(),
    st.lists(overrides(), max_size=2),
    st.lists(addons(), max_size=2),
    addons(),
    MOMENTS,
    st.data(),
)
def test_an_extra_addon_never_turns_an_admission_into_a_refusal(
    plan: PlanLimits,
    override_list: list[LimitOverride],
    addon_list: list[AddOn],
    extra: AddOn,
    at: datetime,
    data: st.DataObject,
) -> None:
    without = effective_limits(plan, override_list, addon_list, at)
    with_extra = effective_limits(plan, override_list, [*addon_list, extra], at)
    for name in LIMIT_FIELDS:
        assert getattr(with_extra, name) >= getattr(without, name)
    request = data.draw(requests(without))
    state = data.draw(states(without, healthy=True))
    before = decide_admission(request, without, state)
    after = decide_admission(request, with_extra, state)
    if isinstance(before, Admission):
        assert isinstance(after, Admission)
        # More room never shortens the run either.
        assert after.max_duration_s >= before.max_duration_s


@settings(max_examples=150, deadline=None)
@given(
    st.decimals(min_value=0, max_value=500, places=3),
    st.decimals(min_value=0, max_value=600, places=3),
    st.lists(st.decimals(min_value=0, max_value=200, places=3), max_size=8),
)
def test_thresholds_are_reported_once_whatever_the_steps(
    granted: Decimal, start: Decimal, steps: list[Decimal]
) -> None:
    used = start
    reported: list[int] = []
    for step in steps:
        reported += credit_threshold_crossed(granted, used, used + step)
        used += step
    assert sorted(reported) == credit_threshold_crossed(granted, start, used)
    assert len(reported) == len(set(reported))
