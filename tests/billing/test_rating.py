"""Tests of the pure rating core: worked examples a person can check by hand, then properties.

The properties compare `rate()` with an independent computation in `fractions.Fraction`
(exact rationals, a hand-written half-up), so a lost or invented cent shows up as a difference.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.core.rating import (
    Adjustment,
    CreditGrant,
    CreditUse,
    InvoiceLine,
    PlanPeriod,
    RatedInvoice,
    RatingInput,
    UsageSlice,
    quote,
    rate,
)
from metering.core.money import UnitPrices

D = Decimal
NOV = datetime(2026, 11, 1, tzinfo=UTC)  # 30 days
DEC = datetime(2026, 12, 1, tzinfo=UTC)
VCPU = D("0.000014")
GIB = D("0.0000045")
HOUR_MS = 3_600_000


def month(start: datetime, end: datetime = DEC, **kw: Any) -> RatingInput:
    return RatingInput(period_start=start, period_end=end, **kw)


def pro_all_month() -> PlanPeriod:
    return PlanPeriod("pro", "pro-1", NOV, DEC, D("150"))


def amounts(inv: RatedInvoice) -> list[tuple[str, Decimal]]:
    return [(line.kind, line.amount) for line in inv.lines]


# --------------------------------------------------------------------------------------------
# Worked examples
# --------------------------------------------------------------------------------------------


def test_two_vcpu_for_an_hour_costs_ten_cents() -> None:
    # 2 vCPU x 3600 s = 7200 vCPU-s; x $0.000014 = $0.1008 -> $0.10.
    # 512 MiB x 3600 s = 1800 GiB-s; x $0.0000045 = $0.0081 -> $0.01.
    usage = UsageSlice("pv1", "pro", "pro-1", VCPU, GIB, 2 * HOUR_MS, 512 * HOUR_MS)
    inv = rate(month(NOV, usage=(usage,), plan_periods=(pro_all_month(),)))
    assert amounts(inv) == [
        ("plan_fee", D("150.00")),
        ("usage_vcpu", D("0.10")),
        ("usage_memory", D("0.01")),
    ]
    vcpu_line = inv.lines[1]
    assert vcpu_line.quantity == D("7200")
    assert vcpu_line.unit_price == VCPU
    assert inv.lines[2].quantity == D("1800")
    assert inv.total == D("150.11")


def test_plan_change_on_the_16th_of_a_30_day_month_bills_half_the_fee() -> None:
    # Hobby Nov 1-16 (15 days, free), Pro from Nov 16 (15 of 30 days): $150 x 1/2 = $75.00.
    mid = datetime(2026, 11, 16, tzinfo=UTC)
    plans = (
        PlanPeriod("hobby", "hobby-1", NOV, mid, D("0")),
        PlanPeriod("pro", "pro-1", mid, DEC, D("150")),
    )
    inv = rate(month(NOV, plan_periods=plans))
    assert amounts(inv) == [("plan_fee", D("75.00"))]
    assert inv.lines[0].description == (
        "Pro plan · Nov 16 \u2013 Nov 30, 2026 (prorated: 50 % of $150.00 a month)")
    assert (inv.lines[0].service_start, inv.lines[0].service_end) == (mid, DEC)
    assert inv.total == D("75.00")


def test_pro_for_one_day_of_a_31_day_month() -> None:
    # $150 x 86400 / 2678400 = $4.838709... -> $4.84.
    oct1, oct31 = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 31, tzinfo=UTC)
    plans = (PlanPeriod("pro", "pro-1", oct31, NOV, D("150")),)
    inv = rate(month(oct1, NOV, plan_periods=plans))
    assert amounts(inv) == [("plan_fee", D("4.84"))]


def test_slices_are_merged_before_rounding() -> None:
    # Three slices of 300 vCPU-s at $0.00001 are $0.003 each (0.00 if rounded alone);
    # merged they are 900 vCPU-s = $0.009 -> $0.01.
    price = D("0.00001")
    pieces = tuple(UsageSlice("pv1", "pro", "pro-1", price, GIB, 300_000, 0) for _ in range(3))
    inv = rate(month(NOV, usage=pieces, plan_periods=(pro_all_month(),)))
    assert amounts(inv) == [("plan_fee", D("150.00")), ("usage_vcpu", D("0.01"))]
    assert inv.lines[1].quantity == D("900")


def test_half_a_cent_rounds_up_and_a_negative_half_cent_rounds_away_from_zero() -> None:
    price = D("0.00001")  # 500 vCPU-s -> exactly $0.005
    plus = UsageSlice("pv1", "pro", "pro-1", price, GIB, 500_000, 0)
    minus = Adjustment("2026-10", "pv1", price, GIB, -500_000, 0)
    inv = rate(month(NOV, usage=(plus,), adjustments=(minus,), plan_periods=(pro_all_month(),)))
    assert amounts(inv) == [
        ("plan_fee", D("150.00")),
        ("usage_vcpu", D("0.01")),
        ("adjustment_vcpu", D("-0.01")),
    ]


def test_enterprise_commitment_is_trued_up_to_exactly_3000() -> None:
    # Usage: 1,000,000 vCPU-s x 0.000014 = 14.00; 1,000,001 GiB-s x 0.0000045 = 4.5000045 -> 4.50.
    # True-up: 3000.00 - (14.00 + 4.50) = 2981.50; the invoice is exactly the commitment.
    plans = (PlanPeriod("enterprise", "ent-1", NOV, DEC, D("0"), D("3000")),)
    usage = UsageSlice("pv-e", "enterprise", "ent-1", VCPU, GIB, 10**9, 1_000_001 * 1_024_000)
    inv = rate(month(NOV, usage=(usage,), plan_periods=plans))
    assert amounts(inv) == [
        ("usage_vcpu", D("14.00")),
        ("usage_memory", D("4.50")),
        ("commitment_true_up", D("2981.50")),
    ]
    assert inv.total == D("3000.00")


def test_enterprise_usage_above_commitment_has_no_true_up() -> None:
    plans = (PlanPeriod("enterprise", "ent-1", NOV, DEC, D("0"), D("3000")),)
    usage = UsageSlice("pv-e", "enterprise", "ent-1", VCPU, GIB, 250_000_000_000, 0)  # $3,500
    inv = rate(month(NOV, usage=(usage,), plan_periods=plans))
    assert amounts(inv) == [("usage_vcpu", D("3500.00"))]


def test_commitment_is_prorated_and_compared_per_plan_period() -> None:
    # Pro until the 16th, enterprise after: commitment 3000 x 1/2 = 1500. The pro half's usage
    # ($70) does not count toward the enterprise commitment.
    mid = datetime(2026, 11, 16, tzinfo=UTC)
    plans = (
        PlanPeriod("pro", "pro-1", NOV, mid, D("150")),
        PlanPeriod("enterprise", "ent-1", mid, DEC, D("0"), D("3000")),
    )
    usage = (
        UsageSlice("pv1", "pro", "pro-1", VCPU, GIB, 5_000_000_000, 0),  # 5,000,000 s = $70
        UsageSlice("pv1", "enterprise", "ent-1", VCPU, GIB, 10_000_000_000, 0),  # $140
    )
    inv = rate(month(NOV, usage=usage, plan_periods=plans))
    assert amounts(inv) == [
        ("plan_fee", D("75.00")),
        ("usage_vcpu", D("70.00")),
        ("usage_vcpu", D("140.00")),
        ("commitment_true_up", D("1360.00")),
    ]
    assert inv.total == D("1645.00")


def test_hobby_credit_pays_the_usage() -> None:
    plans = (PlanPeriod("hobby", "hobby-1", NOV, DEC, D("0")),)
    usage = UsageSlice("pv1", "hobby", "hobby-1", VCPU, GIB, 1_000_000_000, 0)  # $14.00
    grant = CreditGrant("hobby-100", D("100"), 0, None, datetime(2026, 10, 3, tzinfo=UTC))
    inv = rate(month(NOV, usage=(usage,), plan_periods=plans, credits=(grant,)))
    assert amounts(inv) == [("usage_vcpu", D("14.00")), ("credit", D("-14.00"))]
    assert inv.credit_usage == (CreditUse("hobby-100", D("14.00")),)
    assert (inv.subtotal, inv.credits_applied, inv.total) == (D("14.00"), D("14.00"), D("0"))


def test_credit_never_spends_a_fraction_of_a_cent_the_grant_does_not_hold() -> None:
    grant = CreditGrant("g", D("10.009"), 0, None, NOV)  # 10.009 -> at most 10.00
    inv = rate(month(NOV, plan_periods=(pro_all_month(),), credits=(grant,)))
    assert inv.credit_usage == (CreditUse("g", D("10.00")),)
    assert inv.total == D("140.00")


def test_burn_down_order_and_expiry() -> None:
    jan = datetime(2026, 1, 1, tzinfo=UTC)
    grants = (
        CreditGrant("never", D("100"), 1, None, jan),
        CreditGrant("soon", D("100"), 1, datetime(2026, 11, 20, tzinfo=UTC), jan),
        CreditGrant("urgent", D("40"), 0, None, NOV),
        CreditGrant("expired", D("1000"), 0, NOV, jan),  # expired at the period start
    )
    inv = rate(month(NOV, plan_periods=(pro_all_month(),), credits=grants))
    assert inv.credit_usage == (
        CreditUse("urgent", D("40.00")),
        CreditUse("soon", D("100.00")),
        CreditUse("never", D("10.00")),
    )
    assert inv.total == 0


def test_negative_adjustment_carries_forward() -> None:
    # A late true end shortens a September execution by 10,000,000 vCPU-s: -$140.00.
    adj = Adjustment("2026-09", "pv0", VCPU, GIB, -10_000_000_000, 0)
    grant = CreditGrant("g", D("50"), 0, None, NOV)
    plans = (PlanPeriod("hobby", "hobby-1", NOV, DEC, D("0")),)
    inv = rate(month(NOV, adjustments=(adj,), plan_periods=plans, credits=(grant,)))
    assert amounts(inv) == [("adjustment_vcpu", D("-140.00")), ("carry_forward", D("140.00"))]
    assert inv.lines[0].period == "2026-09"
    assert inv.lines[0].description.startswith("Late usage of September 2026 · vCPU time · ")
    assert (inv.subtotal, inv.credits_applied, inv.total) == (D("-140.00"), D(0), D(0))
    assert inv.carry_forward == D("140.00")
    assert inv.credit_usage == ()


def test_quote_for_100k_runs() -> None:
    # 2 vCPU, 1024 MiB, 30 s, 100,000 runs: 6,000,000 vCPU-s x 0.000014 = 84.00,
    # 3,000,000 GiB-s x 0.0000045 = 13.50; 97.50 in all.
    q = quote(2, 1024, 30, 100_000, UnitPrices(VCPU, GIB))
    assert (q.vcpu_ms, q.mib_ms) == (6_000_000_000, 3_072_000_000_000)
    assert (q.vcpu_seconds, q.gib_seconds) == (D("6000000"), D("3000000"))
    assert (q.vcpu_cost, q.memory_cost, q.total, q.total_rounded) == (
        D("84"),
        D("13.5"),
        D("97.5"),
        D("97.50"),
    )


def test_quote_keeps_the_exact_total() -> None:
    q = quote(1, 512, D("0.5"), 3, UnitPrices(VCPU, GIB))  # 1.5 vCPU-s, 0.75 GiB-s
    assert q.total == D("0.000021") + D("0.000003375")
    assert q.total_rounded == D("0.00")
    with pytest.raises(ValueError, match="millisecond"):
        quote(1, 512, D("0.0005"), 1, UnitPrices(VCPU, GIB))


@pytest.mark.parametrize(
    "build",
    [
        # one price version, two prices
        lambda: month(
            NOV,
            plan_periods=(pro_all_month(),),
            usage=(
                UsageSlice("pv1", "pro", "pro-1", VCPU, GIB, 1, 1),
                UsageSlice("pv1", "pro", "pro-1", D("0.1"), GIB, 1, 1),
            ),
        ),
        # usage on a plan that has no period this month
        lambda: month(
            NOV,
            plan_periods=(pro_all_month(),),
            usage=(UsageSlice("pv1", "enterprise", "e1", VCPU, GIB, 1, 1),),
        ),
        # overlapping plan periods
        lambda: month(
            NOV, plan_periods=(pro_all_month(), PlanPeriod("hobby", "h", NOV, DEC, D("0")))
        ),
        # an adjustment for the month being rated
        lambda: month(NOV, adjustments=(Adjustment("2026-11", "pv1", VCPU, GIB, 1, 1),)),
        # two grants with one id
        lambda: month(
            NOV,
            credits=(
                CreditGrant("g", D("1"), 0, None, NOV),
                CreditGrant("g", D("2"), 0, None, NOV),
            ),
        ),
    ],
)
def test_inconsistent_inputs_are_refused(build: Any) -> None:
    with pytest.raises(ValueError):
        rate(build())


def test_bad_values_are_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        RatingInput(NOV, datetime(2026, 11, 30, tzinfo=UTC))  # not a whole month
    with pytest.raises(TypeError):
        UsageSlice("pv1", "pro", "pro-1", 0.000014, GIB, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UsageSlice("pv1", "pro", "pro-1", VCPU, GIB, -1, 1)
    with pytest.raises(ValueError):
        Adjustment("2026-9", "pv1", VCPU, GIB, 1, 1)


# --------------------------------------------------------------------------------------------
# Generated months
# --------------------------------------------------------------------------------------------

MONTHS = [
    (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),  # 30 days
    (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)),  # 31 days
    (datetime(2027, 2, 1, tzinfo=UTC), datetime(2027, 3, 1, tzinfo=UTC)),  # 28 days
    (datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),  # 29 days
]
EARLIER = ["2025-12", "2026-01", "2026-09"]

cents = st.integers(0, 500_000).map(lambda n: D(n).scaleb(-2))
unit_prices = st.one_of(
    st.sampled_from([VCPU, GIB, D("0.00001"), D("0")]),
    st.integers(0, 300_000).map(lambda n: D(n).scaleb(-10)),
)
usage_ms = st.integers(0, 10**12)
delta_ms = st.integers(-(10**12), 10**12)


@st.composite
def months(draw: st.DrawFn) -> RatingInput:
    start, end = draw(st.sampled_from(MONTHS))
    month_s = int((end - start).total_seconds())

    # A small catalog of plan versions and of price versions (each with one fixed price pair).
    plan_keys = [("hobby", "h1"), ("pro", "p1"), ("pro", "p2"), ("enterprise", "e1")]
    catalog = {
        key: (D(0) if key[0] == "hobby" else draw(cents), draw(st.sampled_from([D(0), D(3000)])))
        for key in plan_keys
    }
    price_ids = ["pv-a", "pv-b", "pv-c"]
    price_book = {pv: (draw(unit_prices), draw(unit_prices)) for pv in price_ids}

    # Plan periods: the month cut at whole seconds (sometimes at a millisecond), each piece on a
    # plan or a gap; the first may start before the month and the last end after it.
    cuts = sorted(set(draw(st.lists(st.integers(1, month_s - 1), max_size=3))))
    bounds = [0, *cuts, month_s]
    periods: list[PlanPeriod] = []
    for lo, hi in pairwise(bounds):
        key = draw(st.sampled_from([*plan_keys, None]))
        if key is None:
            continue
        lo_t = start + timedelta(seconds=lo)
        hi_t = start + timedelta(seconds=hi)
        if lo == 0 and draw(st.booleans()):
            lo_t -= timedelta(days=draw(st.integers(1, 40)))
        if hi == month_s and draw(st.booleans()):
            hi_t += timedelta(days=draw(st.integers(1, 40)))
        fee, commit = catalog[key]
        periods.append(PlanPeriod(key[0], key[1], lo_t, hi_t, fee, commit))
    used_keys = sorted({(p.plan_code, p.plan_version_id) for p in periods})

    usage: list[UsageSlice] = []
    if used_keys:
        for _ in range(draw(st.integers(0, 6))):
            code, version = draw(st.sampled_from(used_keys))
            pv = draw(st.sampled_from(price_ids))
            vp, gp = price_book[pv]
            usage.append(UsageSlice(pv, code, version, vp, gp, draw(usage_ms), draw(usage_ms)))

    adjustments: list[Adjustment] = []
    for _ in range(draw(st.integers(0, 3))):
        pv = draw(st.sampled_from(price_ids))
        vp, gp = price_book[pv]
        period = draw(st.sampled_from(EARLIER))
        adjustments.append(Adjustment(period, pv, vp, gp, draw(delta_ms), draw(delta_ms)))

    credits: list[CreditGrant] = []
    for i in range(draw(st.integers(0, 5))):
        expires = draw(
            st.one_of(
                st.none(),
                st.integers(-40 * 86_400, 60 * 86_400).map(lambda s: start + timedelta(seconds=s)),
            )
        )
        granted = start - timedelta(seconds=draw(st.integers(0, 3 * 86_400)))
        remaining = D(draw(st.integers(-100, 5_000_000))).scaleb(-4)
        credits.append(CreditGrant(f"g{i}", remaining, draw(st.integers(0, 2)), expires, granted))

    return RatingInput(
        period_start=start,
        period_end=end,
        usage=tuple(usage),
        plan_periods=tuple(periods),
        adjustments=tuple(adjustments),
        credits=tuple(credits),
    )


# --------------------------------------------------------------------------------------------
# The direct computation: Fractions and a hand-written half-up, from the raw inputs
# --------------------------------------------------------------------------------------------

CENT = Fraction(1, 100)


def half_up(x: Fraction) -> Fraction:
    """Round to the cent, halves away from zero."""
    sign = -1 if x < 0 else 1
    hundredths = abs(x) * 100
    whole = int(hundredths)  # floor, since non-negative
    if hundredths - whole >= Fraction(1, 2):
        whole += 1
    return sign * Fraction(whole, 100)


def floor_cent(x: Fraction) -> Fraction:
    return Fraction(int(x * 100), 100)  # x >= 0 here


def epoch_s(moment: datetime) -> int:
    return int(moment.timestamp() // 1)


def expected(inp: RatingInput) -> dict[str, Any]:
    lo, hi = epoch_s(inp.period_start), epoch_s(inp.period_end)
    seconds: dict[tuple[str, str], int] = defaultdict(int)
    terms: dict[tuple[str, str], tuple[Fraction, Fraction]] = {}
    for p in inp.plan_periods:
        key = (p.plan_code, p.plan_version_id)
        terms[key] = (Fraction(p.monthly_fee), Fraction(p.minimum_commitment))
        seconds[key] += max(0, min(epoch_s(p.end), hi) - max(epoch_s(p.start), lo))

    lines: dict[tuple[Any, ...], Fraction] = {}
    charged: dict[tuple[str, str], Fraction] = defaultdict(Fraction)
    for key, (fee, _) in terms.items():
        amount = half_up(fee * seconds[key] / (hi - lo))
        if amount:
            lines[("plan_fee", key)] = amount
            charged[key] += amount

    ms: dict[tuple[Any, ...], int] = defaultdict(int)
    price: dict[str, tuple[Fraction, Fraction]] = {}
    for u in inp.usage:
        key = (u.plan_code, u.plan_version_id)
        price[u.price_version_id] = (Fraction(u.vcpu_second_price), Fraction(u.gib_second_price))
        ms[("usage_vcpu", key, u.price_version_id)] += u.vcpu_ms
        ms[("usage_memory", key, u.price_version_id)] += u.mib_ms
    for a in inp.adjustments:
        price[a.price_version_id] = (Fraction(a.vcpu_second_price), Fraction(a.gib_second_price))
        ms[("adjustment_vcpu", a.period, a.price_version_id)] += a.vcpu_ms_delta
        ms[("adjustment_memory", a.period, a.price_version_id)] += a.mib_ms_delta
    for line_key, total_ms in ms.items():
        kind, ref, pv = line_key
        if total_ms == 0:
            continue
        vcpu = kind.endswith("vcpu")
        quantity = Fraction(total_ms, 1000) if vcpu else Fraction(total_ms, 1000 * 1024)
        amount = half_up(quantity * price[pv][0 if vcpu else 1])
        lines[line_key] = amount
        if kind.startswith("usage"):
            charged[ref] += amount

    for key, (_, commit) in terms.items():
        shortfall = half_up(commit * seconds[key] / (hi - lo)) - charged[key]
        if shortfall > 0:
            lines[("commitment_true_up", key)] = shortfall

    subtotal = sum(lines.values(), Fraction(0))
    owed = subtotal
    uses: list[tuple[str, Fraction]] = []
    grants = [
        g
        for g in inp.credits
        if g.remaining > 0 and (g.expires_at is None or g.expires_at > inp.period_start)
    ]
    far = datetime(9999, 1, 1, tzinfo=UTC)
    grants.sort(key=lambda g: (g.priority, g.expires_at or far, g.granted_at, g.grant_id))
    for g in grants:
        use = min(floor_cent(Fraction(g.remaining)), max(owed, Fraction(0)))
        if use > 0:
            uses.append((g.grant_id, use))
            owed -= use
    return {
        "lines": lines,
        "subtotal": subtotal,
        "credits": uses,
        "total": max(owed, Fraction(0)),
        "carry_forward": max(-subtotal, Fraction(0)),
    }


def line_key(line: InvoiceLine) -> tuple[Any, ...]:
    plan = (line.plan_code, line.plan_version_id)
    if line.kind in ("plan_fee", "commitment_true_up"):
        return (line.kind, plan)
    if line.kind.startswith("usage"):
        return (line.kind, plan, line.price_version_id)
    return (line.kind, line.period, line.price_version_id)


def charge_lines(inv: RatedInvoice) -> list[InvoiceLine]:
    return [line for line in inv.lines if line.kind not in ("credit", "carry_forward")]


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(months())
def test_rating_matches_a_direct_computation(inp: RatingInput) -> None:
    inv = rate(inp)
    want = expected(inp)
    got = {line_key(line): Fraction(line.amount) for line in charge_lines(inv)}
    assert len(got) == len(charge_lines(inv)), "one line per key"
    assert got == want["lines"]
    assert Fraction(inv.subtotal) == want["subtotal"]
    assert [(u.grant_id, Fraction(u.amount)) for u in inv.credit_usage] == want["credits"]
    assert Fraction(inv.total) == want["total"]
    assert Fraction(inv.carry_forward) == want["carry_forward"]
    for line in charge_lines(inv):
        if line.kind.startswith(("usage", "adjustment")):
            # Usage quantities are exact seconds, and the amount is their one rounding.
            assert line.quantity != 0
            assert Fraction(line.amount) == half_up(
                Fraction(line.quantity) * Fraction(line.unit_price)
            )


@FAST
@given(months())
def test_totals_add_up_and_credits_stay_within_bounds(inp: RatingInput) -> None:
    inv = rate(inp)
    assert inv.total == sum((line.amount for line in inv.lines), D(0))
    assert inv.total >= 0
    assert inv.subtotal == sum((line.amount for line in charge_lines(inv)), D(0))
    assert all(line.amount == line.amount.quantize(D("0.01")) for line in inv.lines)
    credit_lines = [line for line in inv.lines if line.kind == "credit"]
    assert [-line.amount for line in credit_lines] == [u.amount for u in inv.credit_usage]
    assert inv.credits_applied == sum((u.amount for u in inv.credit_usage), D(0))
    assert inv.credits_applied <= max(inv.subtotal, D(0))
    remaining = {g.grant_id: g.remaining for g in inp.credits}
    for use in inv.credit_usage:
        assert 0 < use.amount <= remaining[use.grant_id]
    assert len({u.grant_id for u in inv.credit_usage}) == len(inv.credit_usage)
    if inv.subtotal < 0:
        assert (inv.total, inv.credits_applied, inv.carry_forward) == (D(0), D(0), -inv.subtotal)
    else:
        assert inv.carry_forward == 0
        assert inv.total == inv.subtotal - inv.credits_applied


def split(total: int, cuts: list[int]) -> list[int]:
    """`total` cut into pieces that add up to it (signs kept), at the given fractions."""
    points = sorted({min(abs(total), c) for c in cuts})
    bounds = [0, *points, abs(total)]
    sign = -1 if total < 0 else 1
    return [sign * (b - a) for a, b in pairwise(bounds)]


@FAST
@given(months(), st.data())
def test_cutting_slices_into_pieces_rates_the_same(inp: RatingInput, data: st.DataObject) -> None:
    cuts = st.lists(st.integers(0, 10**12), max_size=3)
    usage: list[UsageSlice] = []
    for u in inp.usage:
        vcpu, mib = split(u.vcpu_ms, data.draw(cuts)), split(u.mib_ms, data.draw(cuts))
        usage.extend(replace(u, vcpu_ms=v, mib_ms=0) for v in vcpu)
        usage.extend(replace(u, vcpu_ms=0, mib_ms=m) for m in mib)
    adjustments: list[Adjustment] = []
    for a in inp.adjustments:
        vcpu = split(a.vcpu_ms_delta, data.draw(cuts))
        adjustments.extend(replace(a, vcpu_ms_delta=v, mib_ms_delta=0) for v in vcpu)
        adjustments.append(replace(a, vcpu_ms_delta=0))
        # A late correction and its reversal in the same close cancel out exactly.
        extra = data.draw(st.integers(1, 10**9))
        adjustments.append(replace(a, vcpu_ms_delta=extra, mib_ms_delta=-extra))
        adjustments.append(replace(a, vcpu_ms_delta=-extra, mib_ms_delta=extra))
    periods: list[PlanPeriod] = []
    for p in inp.plan_periods:
        span = int((p.end - p.start).total_seconds())
        at = data.draw(st.integers(0, span))
        mid = p.start + timedelta(seconds=at)
        periods += [replace(p, end=mid), replace(p, start=mid)]
    cut = replace(
        inp, usage=tuple(usage), adjustments=tuple(adjustments), plan_periods=tuple(periods)
    )
    assert rate(cut) == rate(inp)


@FAST
@given(months(), st.randoms(use_true_random=False))
def test_input_order_does_not_matter(inp: RatingInput, rnd: Any) -> None:
    def shuffled(items: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(items)
        rnd.shuffle(out)
        return tuple(out)

    again = replace(
        inp,
        usage=shuffled(inp.usage),
        plan_periods=shuffled(inp.plan_periods),
        adjustments=shuffled(inp.adjustments),
        credits=shuffled(inp.credits),
    )
    assert rate(again) == rate(inp)


def burn_rank(g: CreditGrant) -> tuple[Any, ...]:
    return (
        g.priority,
        g.expires_at is None,
        g.expires_at or g.granted_at,
        g.granted_at,
        g.grant_id,
    )


@FAST
@given(months())
def test_a_grant_is_exhausted_before_a_later_one_is_touched(inp: RatingInput) -> None:
    inv = rate(inp)
    used = dict(inv.credit_usage)
    live = sorted(
        (
            g
            for g in inp.credits
            if g.remaining >= D("0.01")
            and (g.expires_at is None or g.expires_at > inp.period_start)
        ),
        key=burn_rank,
    )
    for i, later in enumerate(live):
        if used.get(later.grant_id, 0) > 0:
            for earlier in live[:i]:
                # Everything an earlier grant could give (whole cents) was given.
                assert used.get(earlier.grant_id) == earlier.remaining.quantize(
                    D("0.01"), rounding=ROUND_DOWN
                )
    # Expired and empty grants are never touched.
    live_ids = {g.grant_id for g in live}
    assert set(used) <= live_ids
    # Credits stop only when the invoice is paid or the grants are spent.
    if inv.total > 0:
        assert all(
            used.get(g.grant_id) == g.remaining.quantize(D("0.01"), rounding=ROUND_DOWN)
            for g in live
        )


# --------------------------------------------------------------------------------------------
# Wording: what the customer reads
# --------------------------------------------------------------------------------------------


def test_every_line_kind_reads_in_units_and_currency_with_no_internal_id() -> None:
    mid = datetime(2026, 11, 16, tzinfo=UTC)
    plans = (PlanPeriod("hobby", "pv_hobby_1", NOV, mid, D("0")),
             PlanPeriod("enterprise", "pv_ent_7f3a", mid, DEC, D("3000"), D("6000")))
    usage = (UsageSlice("pv_ent_7f3a", "enterprise", "pv_ent_7f3a", VCPU, GIB,
                        3_501_691_364, 1024 * 1000 * 7),)
    late = (Adjustment("2026-10", "pv_hobby_1", VCPU, GIB, 2 * HOUR_MS, 1024 * HOUR_MS),)
    grants = (CreditGrant("cg_503f3ed36374b8ab", D("10"), 0, None, NOV, "Welcome credit"),)
    inv = rate(month(NOV, usage=usage, plan_periods=plans, adjustments=late, credits=grants))
    dash, times = "\u2013", "\u00d7"
    assert [(line.kind, line.description) for line in inv.lines] == [
        ("plan_fee",
         f"Enterprise plan · Nov 16 {dash} Nov 30, 2026 (prorated: 50 % of $3,000.00 a month)"),
        ("usage_vcpu",
         f"vCPU time · 3,501,691.364 vCPU-s {times} $0.000014 · Nov 16 {dash} Nov 30, 2026"),
        ("usage_memory", f"Memory · 7 GiB-s {times} $0.0000045 · Nov 16 {dash} Nov 30, 2026"),
        ("commitment_true_up",
         f"Minimum commitment · Enterprise plan · Nov 16 {dash} Nov 30, 2026 · "
         "$3,000.00 committed, $1,549.02 charged"),
        ("adjustment_vcpu",
         f"Late usage of October 2026 · vCPU time · 7,200 vCPU-s {times} $0.000014"),
        ("adjustment_memory",
         f"Late usage of October 2026 · Memory · 3,600 GiB-s {times} $0.0000045"),
        ("credit", "Credit applied · Welcome credit"),
    ]
    for line in inv.lines:
        assert "pv_" not in line.description and "cg_" not in line.description
        assert line.service_start is not None and line.service_end is not None
    assert (inv.lines[4].service_start, inv.lines[4].service_end) == (
        datetime(2026, 10, 1, tzinfo=UTC), NOV)
    assert inv.lines[-1].grant_id == "cg_503f3ed36374b8ab"  # kept, for metadata
    # A whole month on one plan names no dates on its usage lines.
    whole = rate(month(NOV, plan_periods=(pro_all_month(),), usage=(
        UsageSlice("pro-1", "pro", "pro-1", VCPU, GIB, HOUR_MS, 0),)))
    assert [line.description for line in whole.lines] == [
        f"Pro plan · Nov 1 {dash} Nov 30, 2026", f"vCPU time · 3,600 vCPU-s {times} $0.000014"]
    negative = rate(month(NOV, plan_periods=(plans[0],), adjustments=(
        Adjustment("2026-10", "pv_hobby_1", VCPU, GIB, -10_000_000_000, 0),)))
    assert negative.lines[-1].description == (
        "Credit balance carried forward · $140.00 becomes a credit grant")
