"""Invoicing logic: read a team's month, rate it, store and finalize it; previews and voids.

The month close (`close.py`) runs these for thousands of teams a chunk at a time; the upcoming
preview and the void's correcting invoice run them for one team. The rules of the month:

- usage of the month per price version comes from metering (`usage_by_price_period`, or the
  bulk `metering.usage.usage_totals` cut by the team's price schedule);
- plan periods from team_plans x plan_versions; credits are grants minus live applications;
- adjustments: for each earlier closed month that may have changed (see
  `repository.ADJUSTMENT_CANDIDATES`), current usage minus what live invoices billed for it;
- each invoice records in `invoice_usage` the usage it billed per month and price version, so
  the difference is all a later invoice ever bills, and nothing is billed twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from billing.core import plan_versions as plans_core
from billing.core.rating import rate
from billing.invoices import repository as repo
from billing.invoices.assemble import (
    PlanAssignment,
    PlanVersionRow,
    RatedTeam,
    TeamFacts,
    VersionUsage,
    prepare,
)
from billing.plans import repository as plan_repo
from billing.plans.service import PlanBilling
from metering import plugins
from metering.config import Settings, get_settings
from metering.core.clock import format_period, parse_period
from metering.core.money import fmt_minor
from metering.core.pricing import PriceSchedule
from metering.enforcement.outbox import NewMessage, enqueue_messages
from metering.errors import BadRequest, Conflict, NotFound
from metering.usage import PricedUsage, usage_by_price_period, usage_totals

# Transactions that change executions and commit after a close read usage are caught by
# re-examining executions changed up to this long before the read (see the repository).
LATE_COMMIT_MARGIN = timedelta(hours=1)

VOIDABLE = ("finalized", "synced", "sync_failed", "payment_failed")


def parse_billing_period(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a "YYYY-MM" month, or a 400."""
    try:
        return parse_period(period)
    except ValueError as exc:
        raise BadRequest(f"period: {exc}") from exc


def stale_after(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.stale_after_s)


def _version_usage(priced: PricedUsage) -> VersionUsage:
    p = priced.period
    return VersionUsage(p.version_id, p.plan_code, p.prices, priced.vcpu_ms, priced.mib_ms)


def team_usage(
    session: Session, team_id: str, start: datetime, end: datetime, now: datetime,
    settings: Settings,
) -> tuple[VersionUsage, ...]:
    """One team's usage in [start, end) per price version (any bounds)."""
    if end <= start:
        return ()
    priced = usage_by_price_period(session, team_id, start, end, now, stale_after(settings))
    return tuple(_version_usage(p) for p in priced if p.vcpu_ms or p.mib_ms)


def price_schedules(
    session: Session, team_ids: Sequence[str], start: datetime, end: datetime
) -> dict[str, PriceSchedule]:
    """Each team's price schedule over [start, end), as the installed billing prices usage.

    With the plan-based billing installed, its own derivation runs on one read of every
    team's plan assignments instead of a query per team (the close prices 10,000 teams)."""
    billing = plugins.billing()
    if isinstance(billing, PlanBilling):
        versions = plan_repo.all_versions(session)
        assignments = repo.all_assignments(session, team_ids)
        default = get_settings().default_plan  # what PlanBilling.price_schedule uses
        return {t: plans_core.price_schedule(assignments.get(t, []), versions, default,
                                             start, end) for t in team_ids}
    return {t: billing.price_schedule(session, t, start, end) for t in team_ids}


def month_usage(
    session: Session, start: datetime, end: datetime, now: datetime, settings: Settings,
    team_ids: Sequence[str] | None = None,
) -> dict[str, tuple[VersionUsage, ...]]:
    """Usage of a whole month for every team that has some (or for `team_ids`).

    One bulk read for all teams; a team whose prices change inside the month is read again
    per price period (rare: a plan change or a new plan version mid-month)."""
    totals = usage_totals(session, start, end, now, stale_after(settings), team_ids)
    schedules = price_schedules(session, sorted(totals), start, end)
    out: dict[str, tuple[VersionUsage, ...]] = {}
    for team_id, total in totals.items():
        schedule = schedules[team_id]
        if schedule.cuts(start, end):
            priced = usage_by_price_period(session, team_id, start, end, now,
                                           stale_after(settings), schedule)
            usage = tuple(_version_usage(p) for p in priced if p.vcpu_ms or p.mib_ms)
        else:
            price = schedule.at(start)
            usage = (VersionUsage(price.version_id, price.plan_code, price.prices,
                                  total.vcpu_ms, total.mib_ms),)
        if usage:
            out[team_id] = usage
    return out


def late_usage(
    session: Session, candidates: Mapping[str, Iterable[str]], now: datetime, settings: Settings,
) -> dict[str, dict[tuple[str, str], VersionUsage]]:
    """Current usage of each (team, earlier month) to compare with what was billed: one bulk
    read per month for all its candidate teams."""
    by_month: dict[str, list[str]] = defaultdict(list)
    for team_id, months in candidates.items():
        for month in months:
            by_month[month].append(team_id)
    out: dict[str, dict[tuple[str, str], VersionUsage]] = {t: {} for t in candidates}
    for month, team_ids in sorted(by_month.items()):
        lo, hi = parse_period(month)
        for team_id, usage in month_usage(session, lo, hi, now, settings, team_ids).items():
            for piece in usage:
                out[team_id][(month, piece.price_version_id)] = piece
    return out


@dataclass(frozen=True, slots=True)
class MonthContext:
    """What is shared by every team of one month's rating."""

    period: str
    start: datetime
    end: datetime
    now: datetime
    currency: str
    versions: Mapping[str, Sequence[PlanVersionRow]]


def gather_facts(
    session: Session, ctx: MonthContext, team_ids: Sequence[str], *,
    usage: Mapping[str, tuple[VersionUsage, ...]],
    assignments: Mapping[str, Sequence[PlanAssignment]],
    candidates: Mapping[str, Sequence[str]],
    late: Mapping[str, Mapping[tuple[str, str], VersionUsage]],
    exclude_invoice: str | None = None,
) -> dict[str, TeamFacts]:
    """Read what was billed and the credits left (call under the invoicing lock when the
    result is stored) and put each team's facts together."""
    months = {ctx.period} | {m for t in team_ids for m in candidates.get(t, ())}
    billed = repo.billed_usage(session, team_ids, months, exclude_invoice)
    grants = repo.available_credits(session, team_ids, ctx.start, ctx.now)
    by_team: dict[str, dict[tuple[str, str], Any]] = defaultdict(dict)
    for (team_id, month, version), amount in billed.items():
        by_team[team_id][(month, version)] = amount
    out: dict[str, TeamFacts] = {}
    for team_id in team_ids:
        team_billed = by_team.get(team_id, {})
        examined = set(candidates.get(team_id, ()))
        team_grants = grants.get(team_id, [])
        out[team_id] = TeamFacts(
            team_id=team_id, period_start=ctx.start, period_end=ctx.end,
            default_currency=ctx.currency,
            assignments=tuple(assignments.get(team_id, ())),
            usage=usage.get(team_id, ()),
            billed_this_period={v: b for (m, v), b in team_billed.items() if m == ctx.period},
            late_usage=dict(late.get(team_id, {})),
            late_billed={k: b for k, b in team_billed.items() if k[0] in examined},
            credits=tuple(g.grant for g in team_grants),
            credit_currencies={g.grant.grant_id: g.currency for g in team_grants},
        )
    return out


def rate_facts(facts: TeamFacts, versions: Mapping[str, Sequence[PlanVersionRow]]) -> RatedTeam:
    """Rate one team's month (ValueError if its rows are inconsistent)."""
    prepared = prepare(facts, versions)
    rated = rate(prepared.rating_input)
    return RatedTeam(facts.team_id, rated.period, rated, prepared.usage_records)


def notify_finalized(session: Session, stored: Sequence[repo.StoredInvoice], now: datetime
                     ) -> None:
    """Queue `invoice.finalized` on the orchestrator channel, once per invoice (one insert
    for the whole chunk)."""
    enqueue_messages(session, [
        NewMessage(type="invoice.finalized", team_id=invoice.team_id,
                   key=f"invoice.finalized:{invoice.id}",
                   payload={"invoice_id": invoice.id, "number": invoice.number,
                            "team_id": invoice.team_id, "period": invoice.period,
                            "kind": invoice.kind, "currency": invoice.currency,
                            "total": fmt_minor(invoice.total, invoice.currency)})
        for invoice in stored], now)


# --- one team --------------------------------------------------------------------------------


def rate_team_month(
    session: Session, team_id: str, period: str, now: datetime, settings: Settings, *,
    usage_end: datetime | None = None, exclude_invoice: str | None = None,
    extra_months: Iterable[str] = (),
) -> RatedTeam:
    """Rate one team's month as it stands at `now` (usage up to `usage_end`, default the
    month's end); nothing is stored."""
    start, end = parse_billing_period(period)
    ctx = MonthContext(period, start, end, now, settings.currency, repo.plan_versions(session))
    usage = team_usage(session, team_id, start, min(usage_end or end, end), now, settings)
    assignments = repo.plan_assignments(session, start, end, [team_id])
    candidates = {team_id: sorted(
        set(repo.adjustment_candidates(session, period, start, LATE_COMMIT_MARGIN, [team_id])
            .get(team_id, ())) | {m for m in extra_months if m < period})}
    late = late_usage(session, candidates, now, settings)
    facts = gather_facts(session, ctx, [team_id], usage={team_id: usage},
                         assignments=assignments, candidates=candidates, late=late,
                         exclude_invoice=exclude_invoice)
    try:
        return rate_facts(facts[team_id], ctx.versions)
    except ValueError as exc:
        raise Conflict(f"cannot rate team {team_id} for {period}: {exc}") from exc


def upcoming(session: Session, team_id: str, now: datetime, settings: Settings) -> RatedTeam:
    """The open month rated as it stands now (not stored)."""
    if not repo.team_exists(session, team_id):
        raise NotFound(f"no team {team_id}")
    return rate_team_month(session, team_id, format_period(now), now, settings, usage_end=now)


@dataclass(frozen=True, slots=True)
class VoidResult:
    voided_id: str
    correction: repo.StoredInvoice | None


def void_invoice(session: Session, invoice_id: str, now: datetime, settings: Settings
                 ) -> VoidResult:
    """Void a finalized invoice and issue its correcting invoice, re-rated as things stand.

    The correction bills the month's usage less what other live invoices billed for it, and
    re-examines the earlier months the voided invoice had adjusted (their adjustments are
    released with it), besides any with late usage. The voided invoice's credit applications
    are released too, so the correction may use those credits again."""
    repo.lock_invoicing(session)
    read_at = repo.db_now(session)
    row = repo.get_invoice(session, invoice_id, lock=True)
    if row is None:
        raise NotFound(f"no invoice {invoice_id}")
    if row.status not in VOIDABLE:
        raise Conflict(
            f"invoice {row.number or row.id} is {row.status}; only "
            f"{', '.join(VOIDABLE)} invoices can be voided", status=row.status)
    adjusted = repo.usage_periods_of(session, invoice_id)
    repo.mark_void(session, invoice_id, now)
    rated = rate_team_month(session, row.team_id, row.period, now, settings,
                            extra_months=adjusted)
    stored = repo.store_and_finalize(session, [rated], now=now, usage_read_at=read_at,
                                     kind="correction", corrects=invoice_id)
    notify_finalized(session, stored, now)
    return VoidResult(invoice_id, stored[0] if stored else None)
