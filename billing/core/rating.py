"""Rating: one team's calendar month turned into invoice lines, with no I/O.

The month close reads usage, plan history, late usage and credit grants from storage, hands them
to `rate()` as frozen values, and stores the `RatedInvoice` it gets back. Nothing here touches a
database, a clock or a network, so the same inputs always give the same invoice, to the cent,
whatever order they were read in. `quote()` prices a described workload for the plans API.

Money is `Decimal` end to end (see `metering.core.money`); usage is integer vCPU-milliseconds
and MiB-milliseconds, shown as exact vCPU-seconds and GiB-seconds.

Rules
-----
Rounding. Every line's amount is rounded half-up (away from zero for negative amounts, so a
refund mirrors the charge it corrects) to the currency's minor unit exactly once, from an exact
value. Subtotal, credits and total are sums of rounded lines, so they never need rounding.

Plan fee (`plan_fee`). Plan periods are clipped to the month and their boundaries truncated to
the whole second (a boundary shared by two periods truncates the same way in both, so they still
tile). Periods of the same plan version (`plan_code`, `plan_version_id`) are merged into one
*plan group*; its fee is ``monthly_fee * seconds_on_plan / seconds_in_month``, computed exactly
and rounded once. The line has quantity 1 and unit price equal to its amount (as Stripe and Lago
show prorations); the description carries the intervals and the seconds. Zero fee: no line.
Periods may leave gaps (a team created mid-month pays from then on) but must not overlap.

Usage (`usage_vcpu`, `usage_memory`). Slices are merged by (plan group, price version) before
rounding, so however the caller cut the month into slices the lines are the same. One line per
resource: quantity = exact vCPU-s or GiB-s, unit price = the version's price,
``amount = round_minor(quantity * unit_price)``. A price version always has one pair of prices:
two different pairs for the same id (in usage or adjustments) are an input error. Every slice
must name a plan group present in `plan_periods`, so that no usage escapes its plan's commitment.
Usage on the same price version under two plan versions (e.g. Hobby and Pro sharing the default
prices, around a plan change) therefore gives two lines, one per plan.

Minimum commitment (`commitment_true_up`), per plan group::

    commitment = round_minor(minimum_commitment * seconds_on_plan / seconds_in_month)
    charged    = the group's plan_fee line + the group's usage lines (rounded amounts)
    true_up    = max(0, commitment - charged)

Comparing against the rounded lines makes the group's lines add up to exactly the prorated
commitment when usage falls short (an enterprise month with little usage totals 3000.00, not
2999.99). Adjustments and credits do not count toward a commitment: credits pay the invoice,
they do not reduce what was committed, and adjustments belong to months already trued up (a late
adjustment is billed in full; the earlier month's true-up is not reopened).

Adjustments (`adjustment_vcpu`, `adjustment_memory`): late usage for earlier, closed months,
merged by (corrected period, price version) before rounding, one line per resource; deltas and
amounts may be negative. `period` on the line names the month it corrects. The corrected period
must be before the invoice's month.

Subtotal: the sum of all charge lines (fee, usage, true-up, adjustments); it may be negative.

Credits (`credit`, negative lines). Applied only to a positive subtotal. Grants are ignored if
their remaining balance is not positive or they expired at or before the period start (they
could not have paid for any instant of the month); a grant expiring mid-month still applies.
Burn-down order: lower `priority` first, then soonest `expires_at` (None = never = last), then
oldest `granted_at`, then `grant_id`. Each grant gives ``min(remaining rounded down to the minor
unit, what is still owed)``: rounding down means a credit line never consumes more than the
grant holds. One line per grant used; `credit_usage` lists the same amounts (positive).

Carry forward (`carry_forward`). If negative adjustments make the subtotal negative, no credits
are applied, the total is 0, and the customer is owed ``carry_forward = -subtotal`` (positive).
A `carry_forward` line of that amount balances the invoice so that the total is still the sum of
the lines; the close turns it into a new credit grant for the team.

Line order: per plan group (by first second on the plan, then code, then version): fee, usage
(by price version, vCPU before memory), true-up; then adjustments (by period, price version, vCPU
before memory); then credits in burn-down order; then the carry-forward line.

Input errors raise `ValueError` (or `TypeError` for a float or a bool where a Decimal or an int
belongs): a period that is not one UTC calendar month, overlapping plan periods, one plan version
with two fees, one price version with two prices, usage naming a plan version with no plan
period, an adjustment for the month being rated or later, duplicate grant ids. A bill built on
inconsistent rows is worse than a close that stops and says why.

Quote. `quote()` multiplies a workload out (vcpu x seconds x runs, memory likewise) into integer
milliseconds, prices them exactly, and rounds the total once; it has no plan fee or commitment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal, localcontext
from itertools import pairwise
from typing import Literal, NamedTuple

from billing.core.wording import money_text, month_text, plan_name, span_text, usage_text
from metering.core.clock import (
    format_period,
    from_ms,
    month_start,
    next_month_start,
    parse_period,
    to_ms,
)
from metering.core.money import (
    EXACT,
    UnitPrices,
    add,
    decimal,
    div,
    fmt,
    gib_seconds,
    minor_unit,
    mul,
    round_minor,
    vcpu_seconds,
)

LineKind = Literal[
    "plan_fee",
    "usage_vcpu",
    "usage_memory",
    "commitment_true_up",
    "adjustment_vcpu",
    "adjustment_memory",
    "credit",
    "carry_forward",
]

ZERO = Decimal(0)
ONE = Decimal(1)
MS_PER_SECOND = 1000


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _check_decimal(name: str, value: object, *, non_negative: bool = True) -> None:
    # Refuse floats and strings at the door: a float price would carry binary noise into a bill.
    if not isinstance(value, Decimal) or not value.is_finite():
        raise TypeError(f"{name} must be a finite Decimal, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_int(name: str, value: object, *, non_negative: bool = True) -> None:
    # bool is an int subclass; True vcpu-ms is a bug, not 1 ms.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_aware(name: str, value: object) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


@dataclass(frozen=True, slots=True)
class UsageSlice:
    """Usage of the month under one price version (the caller has split it by time already)."""

    price_version_id: str
    plan_code: str
    plan_version_id: str
    vcpu_second_price: Decimal
    gib_second_price: Decimal
    vcpu_ms: int
    mib_ms: int

    def __post_init__(self) -> None:
        _check_decimal("vcpu_second_price", self.vcpu_second_price)
        _check_decimal("gib_second_price", self.gib_second_price)
        _check_int("vcpu_ms", self.vcpu_ms)
        _check_int("mib_ms", self.mib_ms)


@dataclass(frozen=True, slots=True)
class PlanPeriod:
    """A plan version in force over [start, end); clipped to the month being rated."""

    plan_code: str
    plan_version_id: str
    start: datetime
    end: datetime
    monthly_fee: Decimal
    minimum_commitment: Decimal = ZERO

    def __post_init__(self) -> None:
        _check_aware("start", self.start)
        _check_aware("end", self.end)
        if self.end < self.start:
            raise ValueError(f"plan period ends before it starts: {self.start} > {self.end}")
        _check_decimal("monthly_fee", self.monthly_fee)
        _check_decimal("minimum_commitment", self.minimum_commitment)


@dataclass(frozen=True, slots=True)
class Adjustment:
    """Late usage (or a shortened execution, when negative) for an earlier, closed month."""

    period: str  # "2026-09": the month being corrected
    price_version_id: str
    vcpu_second_price: Decimal
    gib_second_price: Decimal
    vcpu_ms_delta: int
    mib_ms_delta: int

    def __post_init__(self) -> None:
        _check_period(self.period)
        _check_decimal("vcpu_second_price", self.vcpu_second_price)
        _check_decimal("gib_second_price", self.gib_second_price)
        _check_int("vcpu_ms_delta", self.vcpu_ms_delta, non_negative=False)
        _check_int("mib_ms_delta", self.mib_ms_delta, non_negative=False)


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """A credit grant as it stands at close: what is left of it and how it ranks."""

    grant_id: str
    remaining: Decimal
    priority: int
    expires_at: datetime | None
    granted_at: datetime
    label: str = "Credit"  # what the invoice calls it, e.g. "Welcome credit"

    def __post_init__(self) -> None:
        # A negative remaining is tolerated (and skipped): the live balance may overshoot.
        _check_decimal("remaining", self.remaining, non_negative=False)
        _check_int("priority", self.priority, non_negative=False)
        if self.expires_at is not None:
            _check_aware("expires_at", self.expires_at)
        _check_aware("granted_at", self.granted_at)


@dataclass(frozen=True, slots=True)
class RatingInput:
    """Everything `rate()` needs for one team's month; [period_start, period_end) in UTC."""

    period_start: datetime
    period_end: datetime
    currency: str = "usd"
    usage: tuple[UsageSlice, ...] = ()
    plan_periods: tuple[PlanPeriod, ...] = ()
    adjustments: tuple[Adjustment, ...] = ()
    credits: tuple[CreditGrant, ...] = ()

    def __post_init__(self) -> None:
        _check_aware("period_start", self.period_start)
        _check_aware("period_end", self.period_end)
        if self.period_start != month_start(self.period_start) or self.period_end != (
            next_month_start(self.period_start)
        ):
            raise ValueError(
                f"a billing period is one UTC calendar month, got "
                f"[{self.period_start}, {self.period_end})"
            )

    @property
    def period(self) -> str:
        """The `YYYY-MM` being rated."""
        return format_period(self.period_start)


def _check_period(period: str) -> None:
    parts = period.split("-")
    ok = (
        len(parts) == 2
        and len(parts[0]) == 4
        and len(parts[1]) == 2
        and parts[0].isdigit()
        and parts[1].isdigit()
        and 1 <= int(parts[1]) <= 12
    )
    if not ok:
        raise ValueError(f"period must look like 2026-09, got {period!r}")


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One invoice line; `amount` is already rounded to the minor unit."""

    kind: LineKind
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    price_version_id: str | None = None
    period: str | None = None  # only on adjustment lines: the month being corrected
    plan_code: str | None = None
    plan_version_id: str | None = None
    # The stretch of time the line bills for: the plan's time in the month for fees and usage,
    # the corrected month for adjustments, the invoice's month for credits.
    service_start: datetime | None = None
    service_end: datetime | None = None
    grant_id: str | None = None  # on credit lines: the grant drawn on


class CreditUse(NamedTuple):
    """How much of one grant this invoice consumed (positive, minor-unit exact)."""

    grant_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class RatedInvoice:
    """The rated month: lines in a fixed order and the sums over them."""

    period: str
    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal  # sum of charge lines; may be negative
    credits_applied: Decimal  # >= 0; equals -(sum of credit lines)
    total: Decimal  # >= 0; equals the sum of all lines
    credit_usage: tuple[CreditUse, ...] = ()
    carry_forward: Decimal = ZERO  # >= 0; owed to the customer, to become a credit grant


# --------------------------------------------------------------------------------------------
# Rating
# --------------------------------------------------------------------------------------------

PlanKey = tuple[str, str]  # (plan_code, plan_version_id)


@dataclass(slots=True)
class _PlanGroup:
    key: PlanKey
    monthly_fee: Decimal
    minimum_commitment: Decimal
    intervals: list[tuple[int, int]]  # whole epoch seconds, [start, end), clipped to the month

    @property
    def seconds(self) -> int:
        return sum(end - start for start, end in self.intervals)

    @property
    def first_second(self) -> int:
        return min(start for start, _ in self.intervals)


def _floor_second(moment: datetime) -> int:
    # Truncating both ends the same way keeps back-to-back plan periods back to back.
    return to_ms(moment) // MS_PER_SECOND


def _stamp(second: int) -> str:
    return from_ms(second * MS_PER_SECOND).strftime("%Y-%m-%d %H:%M:%SZ")


def _plan_groups(plan_periods: Iterable[PlanPeriod], month: tuple[int, int]) -> list[_PlanGroup]:
    month_lo, month_hi = month
    groups: dict[PlanKey, _PlanGroup] = {}
    clipped: list[tuple[int, int, PlanKey]] = []
    for plan in plan_periods:
        key = (plan.plan_code, plan.plan_version_id)
        lo = max(_floor_second(plan.start), month_lo)
        hi = min(_floor_second(plan.end), month_hi)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _PlanGroup(key, plan.monthly_fee, plan.minimum_commitment, [])
        elif (group.monthly_fee, group.minimum_commitment) != (
            plan.monthly_fee,
            plan.minimum_commitment,
        ):
            # A plan version is immutable; two fees for one version means the caller mixed rows.
            raise ValueError(f"plan version {key} given with two different fees or commitments")
        if lo < hi:
            clipped.append((lo, hi, key))
    clipped.sort()
    for (_, prev_hi, prev_key), (lo, _, key) in pairwise(clipped):
        if lo < prev_hi:
            raise ValueError(f"plan periods overlap: {prev_key} and {key} at {_stamp(lo)}")
    for lo, hi, key in clipped:
        intervals = groups[key].intervals
        # Coalesce touching intervals: cutting a plan period in two must not change the invoice.
        if intervals and intervals[-1][1] == lo:
            intervals[-1] = (intervals[-1][0], hi)
        else:
            intervals.append((lo, hi))
    live = [g for g in groups.values() if g.intervals]
    live.sort(key=lambda g: (g.first_second, g.key))
    # Groups wholly outside the month stay addressable (usage may name them) but bill nothing.
    dead = sorted((g for g in groups.values() if not g.intervals), key=lambda g: g.key)
    return live + dead


def _prorate(monthly: Decimal, seconds: int, month_seconds: int, currency: str) -> Decimal:
    # Multiply before dividing: the one inexact step (e.g. /30 days) comes last, at 60 digits,
    # far below the half-cent that rounding looks at.
    return round_minor(div(mul(monthly, seconds), month_seconds), currency)


class _PriceBook:
    """Checks that each price version id always comes with the same two prices."""

    def __init__(self) -> None:
        self._prices: dict[str, tuple[Decimal, Decimal]] = {}

    def check(self, price_version_id: str, vcpu_price: Decimal, gib_price: Decimal) -> None:
        known = self._prices.setdefault(price_version_id, (vcpu_price, gib_price))
        if known != (vcpu_price, gib_price):
            raise ValueError(
                f"price version {price_version_id!r} given with two prices: "
                f"{known} and {(vcpu_price, gib_price)}"
            )

    def prices(self, price_version_id: str) -> tuple[Decimal, Decimal]:
        return self._prices[price_version_id]


class _Refs(NamedTuple):
    """What a line points back to: price version, corrected period, plan version."""

    price_version_id: str | None = None
    period: str | None = None
    plan_code: str | None = None
    plan_version_id: str | None = None


class _Service(NamedTuple):
    """A line's service period and how its description names it (empty: the whole month)."""

    start: datetime
    end: datetime
    text: str = ""


def _resource_lines(
    prefix: str,
    prices: tuple[Decimal, Decimal],
    usage_ms: tuple[int, int],
    *,
    kinds: tuple[LineKind, LineKind],
    currency: str,
    refs: _Refs,
    service: _Service,
) -> list[InvoiceLine]:
    """The vCPU and memory lines of one merged usage bucket; zero quantities give no line."""
    lines: list[InvoiceLine] = []
    quantities = (vcpu_seconds(usage_ms[0]), gib_seconds(usage_ms[1]))
    for kind, quantity, price in zip(kinds, quantities, prices, strict=True):
        if quantity == 0:
            continue
        # The one rounding of this line, from the exact merged quantity.
        amount = round_minor(mul(quantity, price), currency)
        description = prefix + usage_text(kind, quantity, price, currency) + (
            f" · {service.text}" if service.text else "")
        lines.append(InvoiceLine(kind, description, quantity, price, amount, *refs,
                                 service_start=service.start, service_end=service.end))
    return lines


def _flat_line(kind: LineKind, description: str, amount: Decimal, refs: _Refs,
               service: _Service, grant_id: str | None = None) -> InvoiceLine:
    # Prorated fees, true-ups, credits: quantity 1 at the line's own (rounded) amount.
    return InvoiceLine(kind, description, ONE, amount, amount, *refs,
                       service_start=service.start, service_end=service.end,
                       grant_id=grant_id)


def _group_service(group: _PlanGroup, month: tuple[int, int]) -> _Service:
    """A plan group's time in the month; named in descriptions unless it is the whole month."""
    if not group.intervals:  # usage under a version the team was not on: the month
        return _Service(from_ms(month[0] * MS_PER_SECOND), from_ms(month[1] * MS_PER_SECOND))
    lo = from_ms(group.first_second * MS_PER_SECOND)
    hi = from_ms(max(end for _, end in group.intervals) * MS_PER_SECOND)
    whole = group.intervals == [month]
    spans = ", ".join(span_text(from_ms(a * MS_PER_SECOND), from_ms(b * MS_PER_SECOND))
                      for a, b in group.intervals)
    return _Service(lo, hi, "" if whole else spans)


def _burn_order(grant: CreditGrant) -> tuple[int, bool, datetime, datetime, str]:
    # (False, t) sorts before (True, ...): grants that expire go before those that never do.
    never = grant.expires_at is None
    expires = grant.expires_at if grant.expires_at is not None else grant.granted_at
    return (grant.priority, never, expires, grant.granted_at, grant.grant_id)


def _floor_minor(amount: Decimal, currency: str) -> Decimal:
    # Down, not half-up: a credit line must never spend money the grant does not hold.
    with localcontext(EXACT):
        return amount.quantize(minor_unit(currency), rounding=ROUND_DOWN)


def _usage_by_group(inp: RatingInput, groups: Sequence[_PlanGroup], book: _PriceBook
                    ) -> dict[PlanKey, dict[str, list[int]]]:
    """Usage merged per (plan group, price version) before any rounding."""
    usage: dict[PlanKey, dict[str, list[int]]] = {g.key: {} for g in groups}
    for piece in inp.usage:
        key = (piece.plan_code, piece.plan_version_id)
        if key not in usage:
            raise ValueError(f"usage slice names plan {key}, which has no plan period this month")
        book.check(piece.price_version_id, piece.vcpu_second_price, piece.gib_second_price)
        acc = usage[key].setdefault(piece.price_version_id, [0, 0])
        acc[0] += piece.vcpu_ms
        acc[1] += piece.mib_ms
    return usage


def _group_lines(inp: RatingInput, group: _PlanGroup, usage: dict[str, list[int]],
                 book: _PriceBook, month: tuple[int, int]) -> list[InvoiceLine]:
    """One plan group's lines: its (prorated) fee, its usage per price version, and the
    true-up to its (prorated) minimum commitment."""
    currency = inp.currency
    month_seconds = month[1] - month[0]
    code, version = group.key
    plan_refs = _Refs(plan_code=code, plan_version_id=version)
    seconds = group.seconds
    service = _group_service(group, month)
    span = service.text or span_text(inp.period_start, inp.period_end)
    lines: list[InvoiceLine] = []

    fee = _prorate(group.monthly_fee, seconds, month_seconds, currency)
    if fee != 0:
        description = f"{plan_name(code)} plan · {span}"
        if seconds != month_seconds:
            share = div(seconds * 100, month_seconds).quantize(Decimal("0.1"))
            description += (f" (prorated: {fmt(share)} % of "
                            f"{money_text(group.monthly_fee, currency)} a month)")
        lines.append(_flat_line("plan_fee", description, fee, plan_refs, service))

    for price_version_id, (vcpu_ms, mib_ms) in sorted(usage.items()):
        lines.extend(
            _resource_lines(
                "",
                book.prices(price_version_id),
                (vcpu_ms, mib_ms),
                kinds=("usage_vcpu", "usage_memory"),
                currency=currency,
                refs=plan_refs._replace(price_version_id=price_version_id),
                service=service,
            )
        )

    commitment = _prorate(group.minimum_commitment, seconds, month_seconds, currency)
    charged = add(*(line.amount for line in lines))
    shortfall = add(commitment, -charged)
    if shortfall > 0:
        description = (
            f"Minimum commitment · {plan_name(code)} plan · {span} · "
            f"{money_text(commitment, currency)} committed, "
            f"{money_text(charged, currency)} charged"
        )
        lines.append(_flat_line("commitment_true_up", description, shortfall,
                                plan_refs, service))
    return lines


def _adjustment_lines(inp: RatingInput, book: _PriceBook) -> list[InvoiceLine]:
    """Late usage of earlier months, merged per (corrected period, price version) before
    rounding."""
    late: dict[tuple[str, str], list[int]] = {}
    for adj in inp.adjustments:
        if adj.period >= inp.period:
            raise ValueError(f"adjustment for {adj.period} is not for a month before {inp.period}")
        book.check(adj.price_version_id, adj.vcpu_second_price, adj.gib_second_price)
        acc = late.setdefault((adj.period, adj.price_version_id), [0, 0])
        acc[0] += adj.vcpu_ms_delta
        acc[1] += adj.mib_ms_delta
    lines: list[InvoiceLine] = []
    for (period, price_version_id), (vcpu_ms, mib_ms) in sorted(late.items()):
        lo, hi = parse_period(period)
        lines.extend(
            _resource_lines(
                f"Late usage of {month_text(period)} · ",
                book.prices(price_version_id),
                (vcpu_ms, mib_ms),
                kinds=("adjustment_vcpu", "adjustment_memory"),
                currency=inp.currency,
                refs=_Refs(price_version_id=price_version_id, period=period),
                service=_Service(lo, hi),
            )
        )
    return lines


def _credit_lines(inp: RatingInput, subtotal: Decimal, service: _Service
                  ) -> tuple[list[InvoiceLine], list[CreditUse]]:
    """Grants burnt down in order, only against a positive subtotal."""
    ids = [grant.grant_id for grant in inp.credits]
    if len(set(ids)) != len(ids):
        raise ValueError("credit grant ids must be unique")
    eligible = [
        grant
        for grant in inp.credits
        if grant.remaining > 0 and (grant.expires_at is None or grant.expires_at > inp.period_start)
    ]
    lines: list[InvoiceLine] = []
    credit_usage: list[CreditUse] = []
    owed = subtotal
    for grant in sorted(eligible, key=_burn_order):
        use = min(_floor_minor(grant.remaining, inp.currency), owed)
        if use <= 0:
            continue  # nothing owed any more, or less than one minor unit left in the grant
        owed = add(owed, -use)
        credit_usage.append(CreditUse(grant.grant_id, use))
        lines.append(_flat_line("credit", f"Credit applied · {grant.label}", -use, _Refs(),
                                service, grant_id=grant.grant_id))
    return lines, credit_usage


def rate(inp: RatingInput) -> RatedInvoice:
    """Rate one team's month into invoice lines; see the module docstring for the rules."""
    currency = inp.currency
    month = (_floor_second(inp.period_start), _floor_second(inp.period_end))
    groups = _plan_groups(inp.plan_periods, month)
    book = _PriceBook()
    usage = _usage_by_group(inp, groups, book)
    lines: list[InvoiceLine] = []
    for group in groups:
        lines.extend(_group_lines(inp, group, usage[group.key], book, month))
    lines.extend(_adjustment_lines(inp, book))

    # Sums of rounded lines are exact; round_minor only gives them the minor-unit exponent.
    subtotal = round_minor(add(*(line.amount for line in lines)), currency)
    month_service = _Service(inp.period_start, inp.period_end)
    credit_lines, credit_usage = _credit_lines(inp, subtotal, month_service)
    lines.extend(credit_lines)
    credits_applied = round_minor(add(*(use.amount for use in credit_usage)), currency)

    carry_forward = -subtotal if subtotal < 0 else round_minor(ZERO, currency)
    if carry_forward > 0:
        owed_back = money_text(carry_forward, currency)
        description = f"Credit balance carried forward · {owed_back} becomes a credit grant"
        lines.append(_flat_line("carry_forward", description, carry_forward, _Refs(),
                                month_service))

    total = round_minor(add(*(line.amount for line in lines)), currency)
    # Invariants that the rules above guarantee; cheap enough to keep as a tripwire.
    assert total >= 0
    assert total == add(subtotal, -credits_applied, carry_forward)
    return RatedInvoice(
        period=inp.period,
        currency=currency,
        lines=tuple(lines),
        subtotal=subtotal,
        credits_applied=credits_applied,
        total=total,
        credit_usage=tuple(credit_usage),
        carry_forward=carry_forward,
    )


# --------------------------------------------------------------------------------------------
# Quotes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    """What `runs` executions of `seconds` each at (vcpu, memory_mib) cost, usage only."""

    vcpu: int
    memory_mib: int
    seconds: Decimal
    runs: int
    vcpu_ms: int
    mib_ms: int
    vcpu_seconds: Decimal
    gib_seconds: Decimal
    vcpu_cost: Decimal  # exact
    memory_cost: Decimal  # exact
    total: Decimal  # exact, unrounded
    total_rounded: Decimal  # round_minor(total): what one invoice line of it would show
    currency: str


def quote(
    vcpu: int, memory_mib: int, seconds: Decimal | int | str, runs: int, prices: UnitPrices
) -> Quote:
    """Price a described workload with `prices` (the plan's current ones); no plan fee."""
    _check_int("vcpu", vcpu)
    _check_int("memory_mib", memory_mib)
    _check_int("runs", runs)
    secs = decimal(seconds)
    if secs < 0:
        raise ValueError(f"seconds must be >= 0, got {secs}")
    run_ms = mul(secs, MS_PER_SECOND)
    # Usage is metered in whole milliseconds; a finer duration cannot occur, so refuse it.
    if run_ms != run_ms.to_integral_value():
        raise ValueError(f"seconds must have at most millisecond precision, got {secs}")
    ms = int(run_ms) * runs
    vcpu_ms, mib_ms = vcpu * ms, memory_mib * ms
    vcpu_qty, gib_qty = vcpu_seconds(vcpu_ms), gib_seconds(mib_ms)
    vcpu_cost, memory_cost = mul(vcpu_qty, prices.vcpu_second), mul(gib_qty, prices.gib_second)
    total = add(vcpu_cost, memory_cost)
    return Quote(
        vcpu=vcpu,
        memory_mib=memory_mib,
        seconds=secs,
        runs=runs,
        vcpu_ms=vcpu_ms,
        mib_ms=mib_ms,
        vcpu_seconds=vcpu_qty,
        gib_seconds=gib_qty,
        vcpu_cost=vcpu_cost,
        memory_cost=memory_cost,
        total=total,
        total_rounded=round_minor(total, prices.currency),
        currency=prices.currency,
    )
