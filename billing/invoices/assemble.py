"""From stored facts to a `RatingInput`: plan periods, usage slices, adjustments, credits.

No I/O: the close and the previews read rows (repository) and usage (metering), hand them here
as values, and get back what `billing.core.rating.rate` needs plus the `invoice_usage` rows the
invoice must record. Keeping this pure makes the subtle parts testable without a database:

- plan periods are team_plans x plan_versions, clipped to the month; a plan's first version
  also covers time before it took effect (as a price schedule does), so a plan never lacks one;
- usage for the invoiced month is what metering reports now minus what other live invoices
  already billed for that month (normally nothing; a correcting invoice after a void is the
  case where it is not);
- an adjustment is current usage of an earlier closed month minus everything live invoices
  billed for it, per price version, nonzero only;
- usage under a price version whose plan version the team was not on this month (the default
  schedule, before plans are installed) is billed under a zero-length, fee-less plan group, so
  usage is never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from billing.core.rating import (
    Adjustment,
    CreditGrant,
    PlanPeriod,
    RatedInvoice,
    RatingInput,
    UsageSlice,
)
from metering.core.clock import format_period
from metering.core.money import UnitPrices

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class PlanVersionRow:
    """One plan version as stored."""

    id: str
    plan_code: str
    effective_at: datetime
    currency: str
    monthly_fee: Decimal
    minimum_commitment: Decimal


@dataclass(frozen=True, slots=True)
class PlanAssignment:
    """A team on `plan_code` from `effective_at` until `until` (None: still on it)."""

    plan_code: str
    effective_at: datetime
    until: datetime | None


@dataclass(frozen=True, slots=True)
class VersionUsage:
    """Exact usage under one price version (from metering's price periods)."""

    price_version_id: str
    plan_code: str
    prices: UnitPrices
    vcpu_ms: int
    mib_ms: int


@dataclass(frozen=True, slots=True)
class BilledUsage:
    """What live invoices billed for one (month, price version), summed."""

    vcpu_ms: int
    mib_ms: int
    vcpu_second_price: Decimal | None
    gib_second_price: Decimal | None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """An `invoice_usage` row: usage of `usage_period` this invoice bills (may be negative)."""

    usage_period: str
    price_version_id: str
    vcpu_ms: int
    mib_ms: int
    vcpu_second_price: Decimal
    gib_second_price: Decimal


@dataclass(frozen=True, slots=True)
class TeamFacts:
    """Everything read for one team's month, before any arithmetic."""

    team_id: str
    period_start: datetime
    period_end: datetime
    default_currency: str
    assignments: tuple[PlanAssignment, ...] = ()
    usage: tuple[VersionUsage, ...] = ()
    # price version -> already billed for this month by other live invoices
    billed_this_period: Mapping[str, BilledUsage] = field(default_factory=dict)
    # (earlier month, price version) -> current usage / billed, for months re-examined
    late_usage: Mapping[tuple[str, str], VersionUsage] = field(default_factory=dict)
    late_billed: Mapping[tuple[str, str], BilledUsage] = field(default_factory=dict)
    credits: tuple[CreditGrant, ...] = ()
    credit_currencies: Mapping[str, str] = field(default_factory=dict)  # grant id -> currency


@dataclass(frozen=True, slots=True)
class Prepared:
    """A team's rating input and the usage rows its invoice records."""

    team_id: str
    rating_input: RatingInput
    usage_records: tuple[UsageRecord, ...]


@dataclass(frozen=True, slots=True)
class RatedTeam:
    """A rated invoice ready to store."""

    team_id: str
    period: str
    rated: RatedInvoice
    usage_records: tuple[UsageRecord, ...]

    @property
    def anything_billed(self) -> bool:
        """Charge lines or usage to record: otherwise there is nothing to invoice."""
        return bool(self.usage_records) or any(
            line.kind not in ("credit", "carry_forward") for line in self.rated.lines)


def plan_periods(
    assignments: Iterable[PlanAssignment],
    versions: Mapping[str, Sequence[PlanVersionRow]],
    start: datetime,
    end: datetime,
) -> tuple[list[PlanPeriod], set[str]]:
    """The plan versions a team was on within [start, end), and their currencies.

    `versions` maps a plan code to its versions sorted by `effective_at`.
    """
    periods: list[PlanPeriod] = []
    currencies: set[str] = set()
    for assignment in assignments:
        lo = max(assignment.effective_at, start)
        hi = end if assignment.until is None else min(assignment.until, end)
        if lo >= hi:
            continue
        plan_versions = versions.get(assignment.plan_code)
        if not plan_versions:
            raise ValueError(f"plan {assignment.plan_code!r} has no version")
        for index, version in enumerate(plan_versions):
            # The first version also covers earlier time: a plan always has a price.
            v_lo = version.effective_at if index else lo
            v_hi = plan_versions[index + 1].effective_at if index + 1 < len(plan_versions) else hi
            seg_lo, seg_hi = max(lo, v_lo), min(hi, v_hi)
            if seg_lo >= seg_hi:
                continue
            periods.append(PlanPeriod(
                plan_code=version.plan_code, plan_version_id=version.id, start=seg_lo,
                end=seg_hi, monthly_fee=version.monthly_fee,
                minimum_commitment=version.minimum_commitment))
            currencies.add(version.currency.lower())
    return periods, currencies


def _minus(
    usage: VersionUsage, billed: BilledUsage | None
) -> tuple[int, int]:
    if billed is None:
        return usage.vcpu_ms, usage.mib_ms
    # Clamped: a month is never billed below zero usage; a later adjustment evens it out.
    return max(usage.vcpu_ms - billed.vcpu_ms, 0), max(usage.mib_ms - billed.mib_ms, 0)


def prepare(
    facts: TeamFacts, versions: Mapping[str, Sequence[PlanVersionRow]]
) -> Prepared:
    """Build the rating input of one team's month; raises ValueError on inconsistent rows."""
    start, end = facts.period_start, facts.period_end
    period = format_period(start)
    periods, currencies = plan_periods(facts.assignments, versions, start, end)
    if len(currencies) > 1:
        raise ValueError(f"plans in more than one currency this month: {sorted(currencies)}")
    currency = next(iter(currencies)) if currencies else facts.default_currency.lower()

    groups = {(p.plan_code, p.plan_version_id) for p in periods}
    slices: list[UsageSlice] = []
    records: list[UsageRecord] = []
    for usage in sorted(facts.usage, key=lambda u: (u.price_version_id, u.plan_code)):
        if usage.prices.currency.lower() != currency:
            raise ValueError(
                f"usage priced in {usage.prices.currency} on a {currency} invoice")
        vcpu_ms, mib_ms = _minus(usage, facts.billed_this_period.get(usage.price_version_id))
        if not (vcpu_ms or mib_ms):
            continue
        key = (usage.plan_code, usage.price_version_id)
        if key not in groups:
            # A price version of a plan version the team was not on: bill it fee-less.
            periods.append(PlanPeriod(usage.plan_code, usage.price_version_id, start, start,
                                      ZERO, ZERO))
            groups.add(key)
        slices.append(UsageSlice(
            price_version_id=usage.price_version_id, plan_code=usage.plan_code,
            plan_version_id=usage.price_version_id,
            vcpu_second_price=usage.prices.vcpu_second, gib_second_price=usage.prices.gib_second,
            vcpu_ms=vcpu_ms, mib_ms=mib_ms))
        records.append(UsageRecord(period, usage.price_version_id, vcpu_ms, mib_ms,
                                   usage.prices.vcpu_second, usage.prices.gib_second))

    adjustments: list[Adjustment] = []
    for usage_period, version in sorted(set(facts.late_usage) | set(facts.late_billed)):
        current = facts.late_usage.get((usage_period, version))
        billed = facts.late_billed.get((usage_period, version))
        d_vcpu = (current.vcpu_ms if current else 0) - (billed.vcpu_ms if billed else 0)
        d_mib = (current.mib_ms if current else 0) - (billed.mib_ms if billed else 0)
        if not (d_vcpu or d_mib):
            continue
        if current is not None:
            vcpu_price, gib_price = current.prices.vcpu_second, current.prices.gib_second
        elif billed is not None and billed.vcpu_second_price is not None and (
            billed.gib_second_price is not None
        ):
            vcpu_price, gib_price = billed.vcpu_second_price, billed.gib_second_price
        else:
            raise ValueError(f"no prices known for version {version!r} of {usage_period}")
        adjustments.append(Adjustment(usage_period, version, vcpu_price, gib_price,
                                      d_vcpu, d_mib))
        records.append(UsageRecord(usage_period, version, d_vcpu, d_mib, vcpu_price, gib_price))

    credits = tuple(
        grant for grant in facts.credits
        if facts.credit_currencies.get(grant.grant_id, currency).lower() == currency)
    rating_input = RatingInput(
        period_start=start, period_end=end, currency=currency, usage=tuple(slices),
        plan_periods=tuple(periods), adjustments=tuple(adjustments), credits=credits)
    return Prepared(facts.team_id, rating_input, tuple(records))
