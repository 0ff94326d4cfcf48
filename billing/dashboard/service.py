"""What each dashboard page shows: the contract's reads, called in-process, shaped for display.

The team, balance, usage, running-sandbox and metrics figures come from the same functions
that answer `GET /v1/teams/{id}`, `/balance`, `/usage`, `/sandboxes` and
`/v1/sandboxes/{id}/metrics`, with the signed-in key as the principal, so the page can never
show what the API would refuse that key. Each view is a typed value (`views`): the template
reads its attributes, and the live endpoint answers it as JSON for the page's refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

from sqlalchemy.orm import Session

from billing.accounts import service as accounts
from billing.accounts.schemas import BalanceOut, TeamOut
from billing.dashboard import formatting as fmt
from billing.dashboard import repository as repo
from billing.dashboard import views
from billing.invoices import repository as invoices_repo
from billing.plans import service as plans
from metering import usage as usage_service
from metering.api.pagination import decode_cursor, encode_cursor
from metering.auth.service import Principal
from metering.config import Settings
from metering.core.clock import format_period, month_start, rfc3339, utc_now
from metering.core.limits import LimitField, PlanLimits
from metering.errors import BadRequest, MeteringError, NotFound
from metering.usage import ExecutionOut, UsageOut

log = logging.getLogger(__name__)

PAGE_SIZE = 50
RUNNING_SHOWN = 100
# Finance's "nearing credit" list computes each candidate's live standing; this many at most.
CREDIT_WATCH_TEAMS = 200
NEARING_FRACTION = Decimal("0.8")
CAPPED_SHARE = Decimal("9.99")  # "999 %" is already the point; beyond it the figure is noise


def team_href(team_id: str, *rest: str) -> str:
    return "/dashboard/teams/" + "/".join(quote(p, safe="") for p in (team_id, *rest))


# --- overview -------------------------------------------------------------------------------


Granularity = Literal["hour", "day", "month"]


@dataclass(frozen=True, slots=True)
class ChartRange:
    code: str
    label: str
    granularity: Granularity
    days: int  # 0: from the month's start

    def start(self, now: datetime) -> datetime:
        if self.days == 0:
            return month_start(now)
        if self.granularity == "hour":
            return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=self.days - 1)

    def end(self, now: datetime) -> datetime:
        """The end of the bucket holding `now`. Whole buckets only: the read then sums hourly
        rollups and integrates just the open executions (up to now), instead of integrating
        every execution that touched the partial hour. The figures are the same."""
        if self.granularity == "hour":
            return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


RANGES = {r.code: r for r in (
    ChartRange("24h", "Last 24 hours", "hour", 1),
    ChartRange("7d", "Last 7 days", "day", 7),
    ChartRange("30d", "Last 30 days", "day", 30),
    ChartRange("month", "This month", "day", 0),
)}
DEFAULT_RANGE = "24h"


def chart_range(code: str | None) -> ChartRange:
    return RANGES.get(code or DEFAULT_RANGE, RANGES[DEFAULT_RANGE])


def _count(value: int) -> str:
    return f"{value:,}"


# How the overview shows each limit, in the order shown (a test holds it to `LIMIT_FIELDS`).
LIMIT_LABELS: dict[LimitField, tuple[str, Callable[[int], str]]] = {
    "concurrency": ("Concurrent sandboxes", _count),
    "starts_per_second": ("Starts per second", _count),
    "max_execution_s": ("Longest run", fmt.duration),
    "max_vcpu": ("vCPU per sandbox", _count),
    "max_memory_mib": ("Memory per sandbox", fmt.memory),
    "max_disk_mib": ("Disk per sandbox", fmt.memory),
}


def team_view(team: TeamOut) -> views.TeamView:
    limits = PlanLimits(**team.limits.model_dump()).as_dict()
    return views.TeamView(
        id=team.id, name=team.name or team.id, plan=team.plan, href=team_href(team.id),
        blocked=team.blocked, blocked_reason=team.blocked_reason,
        credit_enforced=team.credit_enforced,
        limits=[(label, shown(limits[name])) for name, (label, shown) in LIMIT_LABELS.items()],
    )


def balance_view(balance: BalanceOut, now: datetime) -> views.BalanceView:
    currency = balance.currency
    granted = Decimal(balance.credit_granted)
    remaining = Decimal(balance.credit_remaining)
    burn = Decimal(balance.burn_rate_per_hour)
    spend = Decimal(balance.month_to_date_spend)
    limit = Decimal(balance.spend_limit) if balance.spend_limit is not None else None
    exhaustion = fmt.parse_time(balance.projected_exhaustion_at)
    if granted <= 0:
        outlook = "No prepaid credit on this plan."
    elif remaining <= 0:
        outlook = "Credit is used up."
    elif exhaustion is None:
        outlook = "Nothing is running: credit is not being used."
    else:
        left = fmt.duration((exhaustion - now).total_seconds())
        outlook = (f"At {fmt.money(burn, currency)} an hour, credit lasts until "
                   f"{fmt.when(exhaustion)} (about {left}).")
    # float-ok: the gauge's display geometry only
    fraction = float(remaining / granted) if granted > 0 else None  # float-ok
    return views.BalanceView(
        currency=currency,
        has_credit=granted > 0,
        credit_enforced=balance.credit_enforced,
        gauge=views.Gauge(fraction=fraction, now=balance.credit_remaining,
                          max=balance.credit_granted,
                          text=f"{fmt.money(remaining, currency)} of "
                               f"{fmt.money(granted, currency)} left"),
        spend_fraction=float(spend / limit) if limit else None,  # float-ok
        figures=views.BalanceFigures(
            credit_remaining=fmt.money(remaining, currency),
            credit_granted=fmt.money(granted, currency),
            credit_used=fmt.money(balance.credit_used, currency),
            month_to_date_spend=fmt.money(spend, currency),
            spend_limit=fmt.money(limit, currency) if limit is not None else "none",
            burn_rate=f"{fmt.money(burn, currency)} / h",
            outlook=outlook,
        ),
    )


def chart_view(usage: UsageOut, rng: ChartRange) -> views.ChartView:
    currency = usage.currency
    points = [views.ChartPoint(
        label=fmt.bucket_label(p.start, rng.granularity),
        start=p.start, end=p.end,
        vcpu_seconds=p.vcpu_seconds, gib_seconds=p.gib_seconds, cost=p.cost,
        vcpu_text=fmt.quantity(p.vcpu_seconds), gib_text=fmt.quantity(p.gib_seconds),
        cost_text=fmt.money(p.cost, currency, fine=True),
    ) for p in usage.series]
    totals = usage.totals
    return views.ChartView(
        range=rng.code, label=rng.label, granularity=rng.granularity,
        currency=currency, points=points,
        totals=views.ChartTotals(vcpu=fmt.quantity(totals.vcpu_seconds),
                                 gib=fmt.quantity(totals.gib_seconds),
                                 cost=fmt.money(totals.cost, currency, fine=True)),
        has_data=any(p.vcpu_seconds != "0" or p.gib_seconds != "0" for p in usage.series),
    )


def execution_row(e: ExecutionOut, currency: str, now: datetime) -> views.ExecutionRow:
    started = fmt.parse_time(e.started_at)
    ended = fmt.parse_time(e.ended_at)
    assert started is not None
    return views.ExecutionRow(
        execution_id=e.execution_id, sandbox_id=e.sandbox_id,
        href=team_href(e.team_id, "sandboxes", e.sandbox_id),
        template=e.template_id or "—", state=e.state,
        vcpu=e.vcpu if e.vcpu is not None else "—",
        memory=fmt.memory(e.memory_mib),
        started=fmt.when_seconds(started), ended=fmt.when_seconds(ended),
        started_at=e.started_at, ended_at=e.ended_at,
        vcpu_count=e.vcpu, memory_mib=e.memory_mib,
        duration=fmt.duration(((ended or now) - started).total_seconds()),
        end=_end_text(e),
        vcpu_seconds=fmt.quantity(e.vcpu_seconds),
        gib_seconds=fmt.quantity(e.gib_seconds),
        cost=fmt.money(e.cost, currency, fine=True),
    )


def _end_text(e: ExecutionOut) -> str:
    if e.state == "running":
        return "running"
    if e.end_inferred:
        return "no news (stopped reporting)"
    kind = e.end_kind or "ended"
    return f"{kind} ({e.end_reason})" if e.end_reason else kind


def overview(session: Session, principal: Principal, settings: Settings, team_id: str,
             range_code: str | None) -> views.OverviewView:
    """The overview's figures, as the page renders them and its refresh answers them."""
    team = accounts.read_team(session, principal, team_id)
    balance = accounts.read_balance(session, principal, team_id)
    rng = chart_range(range_code)
    now = utc_now()
    usage = usage_service.usage_series(session, settings, team_id, rng.start(now), rng.end(now),
                                       rng.granularity)
    running = usage_service.executions_page(session, settings, team_id, "running", None, None,
                                            RUNNING_SHOWN, None)
    currency = balance.currency
    commitment = plans.BILLING.version_at(session, team_id, now).minimum_commitment
    return views.OverviewView(
        team=team_view(team),
        balance=balance_view(balance, now),
        commitment=(commitment_view(Decimal(balance.month_to_date_spend), commitment,
                                    currency) if commitment > 0 else None),
        chart=chart_view(usage, rng),
        running=[execution_row(e, currency, now) for e in running.data],
        running_more=running.next_cursor is not None,
        as_of=fmt.when_seconds(balance.as_of),
        ranges=[views.RangeLink(code=r.code, label=r.label,
                                href=team_href(team_id) + f"?range={r.code}")
                for r in RANGES.values()],
    )


# --- executions -----------------------------------------------------------------------------


def _shape(session: Session, settings: Settings, team_id: str, rows: list[Any]
           ) -> list[ExecutionOut]:
    """Execution rows as `GET /v1/teams/{id}/sandboxes` answers them (search results come
    from the dashboard's own query, so they are shaped by the same function)."""
    return usage_service.execution_rows(session, settings, team_id, rows)


def _cursor(after: str | None) -> tuple[datetime, str] | None:
    if not after:
        return None
    try:
        parts = decode_cursor(after)
        return datetime.fromisoformat(parts[0]), str(parts[1])
    except (ValueError, IndexError, TypeError, MeteringError) as exc:
        raise BadRequest("after: not a cursor this page issued") from exc


def executions(session: Session, principal: Principal, settings: Settings, team_id: str,
               query: str | None, after: str | None) -> views.ExecutionsView:
    """Ended executions newest first, or - with a query - every execution whose sandbox id
    starts with it; `PAGE_SIZE` a page."""
    team = accounts.read_team(session, principal, team_id)
    currency = settings.currency
    now = utc_now()
    query = (query or "").strip()[:256]
    if query:
        rows = repo.search_executions(session, team_id, query, PAGE_SIZE + 1, _cursor(after))
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        data = _shape(session, settings, team_id, rows)
        next_cursor = (encode_cursor(rows[-1].start_at.isoformat(), rows[-1].execution_id)
                       if more and rows else None)
    else:
        page = usage_service.executions_page(session, settings, team_id, "ended", None, None,
                                            PAGE_SIZE, after)
        data, next_cursor = page.data, page.next_cursor
    return views.ExecutionsView(
        team=team_view(team), query=query,
        rows=[execution_row(e, currency, now) for e in data],
        next_cursor=next_cursor, paged=bool(after),
    )


# --- one sandbox ----------------------------------------------------------------------------


def sandbox(session: Session, principal: Principal, settings: Settings, team_id: str,
            sandbox_id: str) -> views.SandboxView:
    """A sandbox's executions and its per-minute cpu and memory (the last 24 h of its life)."""
    team = accounts.read_team(session, principal, team_id)
    rows = repo.sandbox_executions(session, team_id, sandbox_id, PAGE_SIZE)
    if not rows:
        raise NotFound(f"no sandbox {sandbox_id}")
    shaped = _shape(session, settings, team_id, rows)
    now = utc_now()
    newest = shaped[0]
    running = newest.state == "running"
    last = now if running else fmt.parse_time(newest.ended_at) or now
    hi = (last + timedelta(minutes=1)).replace(second=0, microsecond=0)
    first = min(r.start_at for r in rows)
    lo = max(first.replace(second=0, microsecond=0), hi - timedelta(hours=24))
    metrics = usage_service.sandbox_metrics(session, principal, team_id, sandbox_id, lo, hi)
    points = [views.MetricPoint(
        t=m.minute, label=fmt.when(m.minute), samples=m.samples,
        cpu_avg=m.cpu_pct_avg, cpu_max=m.cpu_pct_max, mem_avg=m.memory_used_mib_avg,
        mem_max=str(m.memory_used_mib_max) if m.memory_used_mib_max is not None else None,
    ) for m in metrics.data]
    # What each execution had allocated, over its life (the charts draw use against it).
    allocation = [views.Allocation(start=e.started_at, end=e.ended_at or rfc3339(now),
                                   vcpu=e.vcpu, memory_mib=e.memory_mib)
                  for e in reversed(shaped) if e.vcpu is not None]
    return views.SandboxView(
        team=team_view(team), sandbox_id=sandbox_id, running=running,
        allocation=allocation,
        executions=[execution_row(e, settings.currency, now) for e in shaped],
        allocated_mib=newest.memory_mib, vcpu=newest.vcpu,
        metrics=views.MetricsView(start=rfc3339(lo), end=rfc3339(hi), points=points),
        totals=views.SandboxTotals(
            cost=fmt.money(sum((Decimal(e.cost) for e in shaped), Decimal(0)),
                           settings.currency, fine=True),
            vcpu=fmt.quantity(sum((Decimal(e.vcpu_seconds) for e in shaped), Decimal(0))),
            gib=fmt.quantity(sum((Decimal(e.gib_seconds) for e in shaped), Decimal(0))),
        ),
    )


# --- invoices -------------------------------------------------------------------------------


STATUS_TEXT = {
    "finalized": "Finalized, not yet in Stripe", "synced": "Sent to Stripe, awaiting payment",
    "sync_failed": "Stripe sync failing, retrying", "paid": "Paid",
    "payment_failed": "Payment failed", "void": "Void",
}


def invoice_summary(r: Any) -> views.InvoiceSummary:
    return views.InvoiceSummary(
        id=r.id, number=r.number or "(unnumbered)", team_id=r.team_id,
        period=r.period, kind=r.kind, status=r.status,
        status_text=STATUS_TEXT.get(r.status, r.status),
        currency=r.currency, total=fmt.money(r.total, r.currency),
        subtotal=fmt.money(r.subtotal, r.currency),
        credits_applied=fmt.money(r.credits_applied, r.currency),
        finalized=fmt.when(r.finalized_at), href=team_href(r.team_id, "invoices", r.id),
        team_href=team_href(r.team_id),
        stripe_invoice_id=r.stripe_invoice_id, stripe_status=r.stripe_status,
        sync_attempts=r.sync_attempts or 0, sync_error=r.sync_error,
        synced=fmt.when(r.synced_at), next_sync=fmt.when(r.next_sync_at),
        paid=fmt.when(r.paid_at), payment_failed=fmt.when(r.payment_failed_at),
        corrects=r.corrects_invoice_id,
    )


def line_view(line: Any, currency: str) -> views.LineView:
    return views.LineView(
        kind=line.kind, description=line.description,
        quantity=fmt.exact(line.quantity), unit_price=fmt.exact(line.unit_price),
        amount=fmt.money(line.amount, currency), period=line.period,
    )


def invoices(session: Session, principal: Principal, settings: Settings, team_id: str
             ) -> views.InvoicesView:
    team = accounts.read_team(session, principal, team_id)
    rows = repo.team_invoices(session, team_id, 120)
    return views.InvoicesView(team=team_view(team),
                              invoices=[invoice_summary(r) for r in rows],
                              upcoming=upcoming(session, team_id, settings))


def upcoming(session: Session, team_id: str, settings: Settings) -> views.UpcomingView | None:
    """The open month rated as it stands (`/invoices/upcoming`), when invoicing offers it.

    Invoicing is built beside the dashboard; until its preview exists, or if it fails for a
    team, the page shows the month-to-date spend alone instead of failing."""
    try:
        from billing.invoices import service as invoicing
    except ImportError:  # pragma: no cover - invoicing not installed
        return None
    now = utc_now()
    try:
        with session.begin_nested():  # a failed preview must not spoil the page's transaction
            rated = invoicing.upcoming(session, team_id, now, settings).rated
    except Exception:
        log.warning("upcoming invoice preview failed", extra={"team_id": team_id},
                    exc_info=True)
        return None
    return views.UpcomingView(
        period=format_period(now), currency=rated.currency,
        lines=[line_view(line, rated.currency) for line in rated.lines],
        subtotal=fmt.money(rated.subtotal, rated.currency),
        credits_applied=fmt.money(rated.credits_applied, rated.currency),
        total=fmt.money(rated.total, rated.currency),
    )


def invoice(session: Session, principal: Principal, team_id: str, invoice_id: str
            ) -> views.InvoiceView:
    team = accounts.read_team(session, principal, team_id)
    row = repo.invoice(session, invoice_id)
    if row is None or row.team_id != team_id:
        raise NotFound(f"no invoice {invoice_id}")
    lines = invoices_repo.lines_of(session, [invoice_id]).get(invoice_id, [])
    return views.InvoiceView(team=team_view(team), invoice=invoice_summary(row),
                             lines=[line_view(line, row.currency) for line in lines])


# --- finance --------------------------------------------------------------------------------


def finance(session: Session, principal: Principal, period: str | None,
            settings: Settings | None = None, query: str | None = None,
            sort: str | None = None) -> views.FinanceView:
    """The finance home: every team with its month so far (searchable, sortable), the month's
    invoices with their Stripe state, revenue by plan, and teams running out of credit (live
    standing of at most `CREDIT_WATCH_TEAMS` teams holding credit)."""
    principal.require("finance")
    now = utc_now()
    stripe_on = bool(settings and settings.stripe_api_key)
    periods = repo.invoiced_periods(session, 24)
    chosen = period or (periods[0] if periods else format_period(now))
    try:
        from metering.core.clock import parse_period

        parse_period(chosen)
    except ValueError as exc:
        raise BadRequest(f"period: {exc}") from exc
    rows = repo.period_invoices(session, chosen, 500)
    counts = repo.status_counts(session, chosen)
    totals = repo.period_totals(session, chosen)
    revenue = repo.revenue_by_plan(session, chosen)
    return views.FinanceView(
        period=chosen, periods=periods if chosen in periods else [chosen, *periods],
        invoices=[views.FinanceInvoice(**views.values_of(invoice_summary(r)),
                                       team_name=r.team_name or r.team_id) for r in rows],
        invoice_count=sum(counts.values()),
        counts=sorted(counts.items()),
        totals=[views.PeriodTotal(
            currency=t.currency, invoices=t.invoices,
            subtotal=fmt.money(t.subtotal, t.currency),
            credits_applied=fmt.money(t.credits_applied, t.currency),
            total=fmt.money(t.total, t.currency)) for t in totals],
        revenue=[views.PlanRevenue(plan=r.plan_code or "other", currency=r.currency,
                                   invoices=r.invoices,
                                   charges=fmt.money(r.charges, r.currency))
                 for r in revenue],
        credit_watch=credit_watch(session, now),
        export_href=f"/dashboard/finance/invoices.csv?period={chosen}",
        team_count=repo.team_count(session),
        stripe_configured=stripe_on,
        teams=team_list(session, now, query, sort, period=chosen),
    )


def credit_watch(session: Session, now: datetime) -> list[views.CreditWatchRow]:
    """Teams with at least 80 % of their credit used (live), most used first."""
    out: list[tuple[Decimal, views.CreditWatchRow]] = []
    for team in repo.teams_with_credit(session, now, CREDIT_WATCH_TEAMS):
        _, standing = plans.BILLING.view(session, team.id, now)
        granted = standing.credit_granted
        if granted <= 0:
            continue
        used = standing.credit_used
        share = used / granted
        if share < NEARING_FRACTION:
            continue
        remaining = max(granted - used, Decimal(0))
        out.append((share, views.CreditWatchRow(
            team_id=team.id, name=team.name or team.id, href=team_href(team.id),
            percent=f"{min(share, CAPPED_SHARE) * 100:.0f} %",
            remaining=fmt.money(remaining, standing.currency),
            granted=fmt.money(granted, standing.currency),
            burn_rate=f"{fmt.money(standing.burn_rate_per_hour, standing.currency)} / h",
            state="past" if used >= granted else "nearing",
        )))
    out.sort(key=lambda t: t[0], reverse=True)
    return [row for _, row in out]


# --- finance: the team list -----------------------------------------------------------------


TEAM_LIST_LIMIT = 200
TEAM_SORTS = {
    "usage": "Month-to-date usage", "credit": "Credit left", "status": "Status", "name": "Name",
}
DEFAULT_TEAM_SORT = "usage"
# Most urgent first when sorted by status.
STATUS_ORDER = {"blocked": 0, "out_of_credit": 1, "nearing_credit": 2, "running": 3,
                "idle": 4}
STATUS_LABELS = {"blocked": "blocked", "out_of_credit": "out of credit",
                 "nearing_credit": "nearing credit", "running": "running", "idle": "idle"}


def commitment_view(spend: Decimal, commitment: Decimal, currency: str
                    ) -> views.CommitmentView:
    """Progress of a month's usage against a plan's minimum commitment (Enterprise)."""
    share = spend / commitment if commitment > 0 else Decimal(0)
    shortfall = max(commitment - spend, Decimal(0))
    return views.CommitmentView(
        spend=fmt.money(spend, currency), commitment=fmt.money(commitment, currency),
        fraction=float(min(share, Decimal(1))),  # float-ok: the bar's width only
        percent=f"{min(share, CAPPED_SHARE) * 100:.0f} %",
        shortfall=fmt.money(shortfall, currency),
        text=(f"{fmt.money(spend, currency)} of the {fmt.money(commitment, currency)} "
              "monthly commitment used"),
        met=shortfall == 0,
    )


class _Ranked(NamedTuple):
    """A team's row with what it sorts by."""

    spend: Decimal
    left: Decimal | None  # credit left; None: no credit
    row: views.TeamRow


def team_list(session: Session, now: datetime, query: str | None, sort: str | None, *,
              period: str) -> views.TeamList:
    """Teams (at most `TEAM_LIST_LIMIT`, matching the search) with their live month so far:
    usage charges, credit left or commitment progress, and a status, sorted as asked."""
    query = (query or "").strip()[:128]
    sort = sort if sort in TEAM_SORTS else DEFAULT_TEAM_SORT
    rows = repo.team_rows(session, query, TEAM_LIST_LIMIT + 1)
    more = len(rows) > TEAM_LIST_LIMIT
    teams: list[_Ranked] = []
    totals: dict[str, Decimal] = {}
    for row in rows[:TEAM_LIST_LIMIT]:
        limits, standing = plans.BILLING.view(session, row.id, now)
        version = plans.BILLING.version_at(session, row.id, now)
        currency = standing.currency
        granted = standing.credit_granted
        remaining = max(granted - standing.credit_used, Decimal(0)) if granted > 0 else None
        if standing.blocked:
            status = "blocked"
        elif granted > 0 and standing.credit_used >= granted and limits.credit_enforced:
            status = "out_of_credit"
        elif granted > 0 and standing.credit_used >= granted * NEARING_FRACTION:
            status = "nearing_credit"
        elif standing.burn_rate_per_hour > 0:
            status = "running"
        else:
            status = "idle"
        commitment = version.minimum_commitment
        totals[currency] = totals.get(currency, Decimal(0)) + standing.month_spend
        teams.append(_Ranked(standing.month_spend, remaining, views.TeamRow(
            id=row.id, name=row.name or row.id, href=team_href(row.id),
            plan=limits.plan_code, auto_created=row.auto_created,
            status=status, status_text=STATUS_LABELS[status],
            blocked_reason=standing.blocked_reason,
            month_spend=fmt.money(standing.month_spend, currency),
            burn_rate=f"{fmt.money(standing.burn_rate_per_hour, currency)} / h",
            credit_left=fmt.money(remaining, currency) if remaining is not None else None,
            commitment=(commitment_view(standing.month_spend, commitment, currency)
                        if commitment > 0 else None),
        )))
    if sort == "usage":
        teams.sort(key=lambda t: (-t.spend, t.row.id))
    elif sort == "credit":  # least credit left first; teams without credit last
        teams.sort(key=lambda t: (t.left is None, t.left or 0, t.row.id))
    elif sort == "status":
        teams.sort(key=lambda t: (STATUS_ORDER[t.row.status], -t.spend, t.row.id))
    else:
        teams.sort(key=lambda t: (str(t.row.name).lower(), t.row.id))
    shown = [t.row for t in teams]
    base = f"/dashboard/finance?period={quote(period, safe='')}"
    search = f"&q={quote(query, safe='')}" if query else ""
    return views.TeamList(
        rows=shown, query=query, sort=sort, more=more,
        limit=TEAM_LIST_LIMIT, month=format_period(now),
        month_spend=[views.CurrencyTotal(currency=c, total=fmt.money(a, c))
                     for c, a in sorted(totals.items())],
        running=sum(1 for t in shown if t.status == "running"),
        sorts=[views.SortLink(code=code, label=label, href=f"{base}{search}&sort={code}",
                              current=code == sort) for code, label in TEAM_SORTS.items()],
    )
