"""What each dashboard page shows, as typed values: the service builds them, the templates read
their attributes, and the two live pages' refresh answers them as JSON (`as_json`).

Every figure is already formatted for display (text), except the few numbers the page's script
draws with (`fraction`, `vcpu_count`, `memory_mib`, the charts' raw series).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any


def as_json(view: object) -> Any:
    """A view as plain JSON values (nested views become objects, tuples arrays)."""
    if is_dataclass(view) and not isinstance(view, type):
        return asdict(view)
    return view


def values_of(view: object) -> dict[str, Any]:
    """A view's fields by name, one level deep (to build a wider view from a narrower one)."""
    assert is_dataclass(view) and not isinstance(view, type)
    return {f.name: getattr(view, f.name) for f in fields(view)}


# --- the team (every team page's heading and navigation) ------------------------------------


@dataclass(frozen=True, slots=True)
class TeamView:
    id: str
    name: str
    plan: str
    href: str
    blocked: bool
    blocked_reason: str | None
    credit_enforced: bool
    limits: list[tuple[str, str]]  # (label, value) in the order shown


# --- overview -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gauge:
    fraction: float | None  # float-ok: the gauge's display geometry only
    now: str
    max: str
    text: str


@dataclass(frozen=True, slots=True)
class BalanceFigures:
    credit_remaining: str
    credit_granted: str
    credit_used: str
    month_to_date_spend: str
    spend_limit: str
    burn_rate: str
    outlook: str


@dataclass(frozen=True, slots=True)
class BalanceView:
    currency: str
    has_credit: bool
    credit_enforced: bool
    gauge: Gauge
    spend_fraction: float | None  # float-ok: display geometry only
    figures: BalanceFigures


@dataclass(frozen=True, slots=True)
class ChartPoint:
    label: str
    start: str
    end: str
    vcpu_seconds: str
    gib_seconds: str
    cost: str
    vcpu_text: str
    gib_text: str
    cost_text: str


@dataclass(frozen=True, slots=True)
class ChartTotals:
    vcpu: str
    gib: str
    cost: str


@dataclass(frozen=True, slots=True)
class ChartView:
    range: str
    label: str
    granularity: str
    currency: str
    points: list[ChartPoint]
    totals: ChartTotals
    has_data: bool


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    execution_id: str
    sandbox_id: str
    href: str
    template: str
    state: str
    vcpu: int | str  # "—" when unknown
    memory: str
    started: str
    ended: str
    started_at: str
    ended_at: str | None
    vcpu_count: int | None
    memory_mib: int | None
    duration: str
    end: str
    vcpu_seconds: str
    gib_seconds: str
    cost: str


@dataclass(frozen=True, slots=True)
class CommitmentView:
    """Progress of a month's usage against a plan's minimum commitment (Enterprise)."""

    spend: str
    commitment: str
    fraction: float  # float-ok: the bar's width only
    percent: str
    shortfall: str
    text: str
    met: bool


@dataclass(frozen=True, slots=True)
class RangeLink:
    code: str
    label: str
    href: str


@dataclass(frozen=True, slots=True)
class OverviewView:
    team: TeamView
    balance: BalanceView
    commitment: CommitmentView | None
    chart: ChartView
    running: list[ExecutionRow]
    running_more: bool
    as_of: str
    ranges: list[RangeLink]


# --- executions and one sandbox -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutionsView:
    team: TeamView
    query: str
    rows: list[ExecutionRow]
    next_cursor: str | None
    paged: bool


@dataclass(frozen=True, slots=True)
class Allocation:
    start: str
    end: str
    vcpu: int
    memory_mib: int | None


@dataclass(frozen=True, slots=True)
class MetricPoint:
    t: str
    label: str
    samples: int
    cpu_avg: str | None
    cpu_max: str | None
    mem_avg: str | None
    mem_max: str | None


@dataclass(frozen=True, slots=True)
class MetricsView:
    start: str
    end: str
    points: list[MetricPoint]


@dataclass(frozen=True, slots=True)
class SandboxTotals:
    cost: str
    vcpu: str
    gib: str


@dataclass(frozen=True, slots=True)
class SandboxView:
    team: TeamView
    sandbox_id: str
    running: bool
    allocation: list[Allocation]
    executions: list[ExecutionRow]
    allocated_mib: int | None
    vcpu: int | None
    metrics: MetricsView
    totals: SandboxTotals


# --- invoices -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceSummary:
    id: str
    number: str
    team_id: str
    period: str
    kind: str
    status: str
    status_text: str
    currency: str
    total: str
    subtotal: str
    credits_applied: str
    finalized: str
    href: str
    team_href: str
    stripe_invoice_id: str | None
    stripe_status: str | None
    sync_attempts: int
    sync_error: str | None
    synced: str
    next_sync: str
    paid: str
    payment_failed: str
    corrects: str | None


@dataclass(frozen=True, slots=True)
class LineView:
    kind: str
    description: str
    quantity: str
    unit_price: str
    amount: str
    period: str | None


@dataclass(frozen=True, slots=True)
class UpcomingView:
    period: str
    currency: str
    lines: list[LineView]
    subtotal: str
    credits_applied: str
    total: str


@dataclass(frozen=True, slots=True)
class InvoicesView:
    team: TeamView
    invoices: list[InvoiceSummary]
    upcoming: UpcomingView | None


@dataclass(frozen=True, slots=True)
class InvoiceView:
    team: TeamView
    invoice: InvoiceSummary
    lines: list[LineView]


# --- finance --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FinanceInvoice(InvoiceSummary):
    team_name: str


@dataclass(frozen=True, slots=True)
class PeriodTotal:
    currency: str
    invoices: int
    subtotal: str
    credits_applied: str
    total: str


@dataclass(frozen=True, slots=True)
class PlanRevenue:
    plan: str
    currency: str
    invoices: int
    charges: str


@dataclass(frozen=True, slots=True)
class CreditWatchRow:
    team_id: str
    name: str
    href: str
    percent: str
    remaining: str
    granted: str
    burn_rate: str
    state: str  # "nearing" or "past"


@dataclass(frozen=True, slots=True)
class TeamRow:
    id: str
    name: str
    href: str
    plan: str
    auto_created: bool
    status: str
    status_text: str
    blocked_reason: str | None
    month_spend: str
    burn_rate: str
    credit_left: str | None
    commitment: CommitmentView | None


@dataclass(frozen=True, slots=True)
class CurrencyTotal:
    currency: str
    total: str


@dataclass(frozen=True, slots=True)
class SortLink:
    code: str
    label: str
    href: str
    current: bool


@dataclass(frozen=True, slots=True)
class TeamList:
    rows: list[TeamRow]
    query: str
    sort: str
    more: bool
    limit: int
    month: str
    month_spend: list[CurrencyTotal]
    running: int
    sorts: list[SortLink]


@dataclass(frozen=True, slots=True)
class FinanceView:
    period: str
    periods: list[str]
    invoices: list[FinanceInvoice]
    invoice_count: int
    counts: list[tuple[str, int]]
    totals: list[PeriodTotal]
    revenue: list[PlanRevenue]
    credit_watch: list[CreditWatchRow]
    export_href: str
    team_count: int
    stripe_configured: bool
    teams: TeamList


# --- a charge explained (billing/dashboard/charges.py) --------------------------------------


@dataclass(frozen=True, slots=True)
class CustomerInvoice(InvoiceSummary):
    """An invoice as the customer reads (and prints) it."""

    period_text: str
    service_text: str
    currency_code: str


@dataclass(frozen=True, slots=True)
class ChargeLine:
    kind: str
    description: str
    service: str
    quantity: str
    unit_price: str
    amount: str
    href: str | None  # usage lines only: their runs


@dataclass(frozen=True, slots=True)
class CustomerInvoiceView:
    team: TeamView
    invoice: CustomerInvoice
    lines: list[ChargeLine]


@dataclass(frozen=True, slots=True)
class LineHead:
    description: str
    service: str
    quantity: str
    unit_price: str
    amount: str


@dataclass(frozen=True, slots=True)
class RunRow:
    sandbox_id: str
    href: str
    template: str
    started: str
    ended: str
    vcpu: int
    memory: str
    seconds: str
    quantity: str
    cost: str


@dataclass(frozen=True, slots=True)
class LineRunsView:
    team: TeamView
    title: str
    back_href: str
    back_text: str
    line: LineHead
    as_of: str
    unit: str
    rows: list[RunRow]
    more_href: str | None


@dataclass(frozen=True, slots=True)
class AllocationBar:
    x: str
    w: str
    h: str
    y: str
    vcpu: int
    memory: str
    start: str
    end: str
    text: str


@dataclass(frozen=True, slots=True)
class RunEvent:
    time: str
    kind: str
    details: str
    source: str


@dataclass(frozen=True, slots=True)
class RunView:
    team: TeamView
    execution_id: str
    sandbox_id: str
    sandbox_href: str
    allocation: list[AllocationBar]
    chart_height: int
    first: str
    last: str
    events: list[RunEvent]
