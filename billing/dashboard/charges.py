"""The invoice page and the pages that explain its charges: a usage line's sandbox runs, and
one run's lifecycle events and allocation over time.

The figures come from the same functions as the API (`billing.charges.service`), with the
signed-in key as the principal, so a page never shows what the API would refuse that key.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session

from billing.accounts import service as accounts
from billing.charges import service as charges
from billing.core.wording import UNITS, money_text, month_text, span_text
from billing.dashboard import formatting as fmt
from billing.dashboard import repository as repo
from billing.dashboard import views
from billing.dashboard.service import invoice_summary, team_href, team_view
from billing.invoices import repository as invoice_repo
from metering.auth.service import Principal
from metering.config import Settings
from metering.core.clock import parse_period
from metering.errors import NotFound

PAGE_SIZE = 50
CHART_HEIGHT = 120


def _service_text(start: datetime | None, end: datetime | None) -> str:
    return span_text(start, end) if start is not None and end is not None else "—"


def _line_view(line: Any, currency: str, href: str | None) -> views.ChargeLine:
    unit = UNITS.get(line.kind)
    return views.ChargeLine(
        kind=line.kind, description=line.description,
        service=_service_text(line.service_start, line.service_end),
        quantity=f"{fmt.exact(line.quantity)} {unit}" if unit else fmt.exact(line.quantity),
        unit_price=money_text(line.unit_price, currency),
        amount=fmt.money(line.amount, currency),
        href=href if line.kind in charges.USAGE_KINDS else None,
    )


def invoice(session: Session, principal: Principal, team_id: str, invoice_id: str
            ) -> views.CustomerInvoiceView:
    """An invoice as the customer reads it (and prints it)."""
    team = accounts.read_team(session, principal, team_id)
    row = repo.invoice(session, invoice_id)
    if row is None or row.team_id != team_id or row.status == "draft":
        raise NotFound(f"no invoice {invoice_id}")
    lines = invoice_repo.lines_of(session, [invoice_id]).get(invoice_id, [])
    start, end = parse_period(row.period)
    summary = views.CustomerInvoice(
        **views.values_of(invoice_summary(row)), period_text=month_text(row.period),
        service_text=span_text(start, end), currency_code=row.currency.upper())
    base = team_href(team_id, "invoices", invoice_id, "lines")
    return views.CustomerInvoiceView(
        team=team_view(team), invoice=summary,
        lines=[_line_view(line, row.currency, f"{base}/{line.position}") for line in lines])


def _run_href(team_id: str, execution_id: str) -> str:
    return team_href(team_id, "runs", execution_id)


def line(session: Session, principal: Principal, settings: Settings, team_id: str,
         invoice_id: str, position: int, after: str | None) -> views.LineRunsView:
    """A usage line and the sandbox runs it is made of, newest first, a page at a time."""
    team = accounts.read_team(session, principal, team_id)
    charge = charges.invoice_charge(session, principal, invoice_id, position)
    if charge.team_id != team_id:
        raise NotFound(f"no invoice {invoice_id}")
    page = charges.executions_page(session, charge, settings, limit=PAGE_SIZE, after=after)
    line_out = page.line
    currency = charge.currency
    unit = line_out.unit or ""
    rows = [views.RunRow(
        sandbox_id=r.sandbox_id, href=_run_href(team_id, r.execution_id),
        template=r.template_id or "—",
        started=fmt.when_seconds(fmt.parse_time(r.started_at)),
        ended="running" if r.running else
        fmt.when_seconds(fmt.parse_time(r.ended_at)) + (" (no news)" if r.end_inferred
                                                        else ""),
        vcpu=r.vcpu, memory=fmt.memory(r.memory_mib),
        seconds=fmt.exact(Decimal(r.seconds)),
        quantity=fmt.exact(Decimal(r.quantity)),
        cost=money_text(Decimal(r.cost), currency),
    ) for r in page.data]
    service = line_out.service_period
    here = team_href(team_id, "invoices", invoice_id, "lines", str(position))
    return views.LineRunsView(
        team=team_view(team), title=f"Line {position} of invoice",
        back_href=team_href(team_id, "invoices", invoice_id), back_text="The invoice",
        line=views.LineHead(
            description=line_out.description,
            service=_service_text(fmt.parse_time(service.start), fmt.parse_time(service.end))
            if service else "—",
            quantity=f"{fmt.exact(Decimal(line_out.quantity))} {unit}",
            unit_price=money_text(Decimal(line_out.unit_price), currency),
            amount=fmt.money(Decimal(line_out.amount), currency)),
        as_of=fmt.when(page.as_of), unit=unit, rows=rows,
        more_href=f"{here}?after={quote(page.next_cursor, safe='')}"
        if page.next_cursor else None,
    )


def _at(value: str) -> datetime:
    moment = fmt.parse_time(value)
    assert moment is not None  # the API's times are never empty
    return moment


def run(session: Session, principal: Principal, team_id: str, execution_id: str
        ) -> views.RunView:
    """One sandbox run: its lifecycle events and the allocation they make."""
    team = accounts.read_team(session, principal, team_id)
    found = charges.execution_events(session, principal, execution_id)
    if found.team_id != team_id:
        raise NotFound(f"no execution {execution_id}")
    events = found.data
    sandbox_id = found.sandbox_id
    allocation = found.allocation
    times = [_at(a.start) for a in allocation]
    ends = [_at(a.end) for a in allocation if a.end]
    newest = max((_at(e.time) for e in events), default=None)
    first = times[0] if times else None
    last = max([*ends, *([newest] if newest else [])], default=first)
    shapes: list[views.AllocationBar] = []
    if first is not None and last is not None:
        span = max((last - first).total_seconds(), 1e-3)  # float-ok: chart geometry only
        top = max(a.vcpu for a in allocation)
        for a in allocation:
            lo = fmt.parse_time(a.start)
            hi = fmt.parse_time(a.end) or last
            assert lo is not None
            x = (lo - first).total_seconds() / span * 1000  # float-ok: chart geometry only
            w = max((hi - lo).total_seconds() / span * 1000, 1)  # float-ok: chart geometry
            h = a.vcpu / top * (CHART_HEIGHT - 10)  # float-ok: chart geometry only
            shapes.append(views.AllocationBar(
                x=f"{x:.1f}", w=f"{w:.1f}", h=f"{h:.1f}",
                y=f"{CHART_HEIGHT - h:.1f}", vcpu=a.vcpu,
                memory=fmt.memory(a.memory_mib),
                start=fmt.when_seconds(lo),
                end=fmt.when_seconds(fmt.parse_time(a.end)) if a.end else "its end",
                text=f"{a.vcpu} vCPU, {fmt.memory(a.memory_mib)}",
            ))
    return views.RunView(
        team=team_view(team), execution_id=execution_id, sandbox_id=sandbox_id,
        sandbox_href=team_href(team_id, "sandboxes", sandbox_id),
        allocation=shapes, chart_height=CHART_HEIGHT,
        first=fmt.when_seconds(first), last=fmt.when_seconds(last),
        events=[views.RunEvent(
            time=fmt.when_seconds(fmt.parse_time(e.time)),
            kind=e.type.rsplit(".", 1)[1],
            details=", ".join(f"{k}: {v}" for k, v in sorted(e.data.items())
                              if k not in ("team_id", "execution_id")) or "—",
            source=e.source) for e in events],
    )
