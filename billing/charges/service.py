"""Explain a charge: from a usage line of an invoice (or of the upcoming one) down to the
executions it is made of, and from an execution to its lifecycle events.

A line's executions are integrated from their raw lifecycle events as they stood when the
invoice's close read usage (`metering.usage.from_events`, the path that verifies invoices),
inside the time the line's price version was in force for the team that month. So their
usage adds up exactly to the line's quantity, and their exact (unrounded) costs at the line's
unit price to the line's unrounded amount, which the line rounds once; events that arrived
after the close are billed on a later invoice and are not shown here. The upcoming invoice's
lines are rated and explained as of the moment of the read.

Only a usage line (`usage_vcpu`, `usage_memory`) is made of executions: a fee, a true-up or a
credit is not, and an adjustment is the difference between two readings of an earlier month.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any, cast

from sqlalchemy.orm import Session

from billing.charges.schemas import (
    AllocationOut,
    ExecutionEventsOut,
    LifecycleEventOut,
    LineExecutionOut,
    LineExecutionsPage,
)
from billing.core.rating import InvoiceLine
from billing.invoices import repository as invoice_repo
from billing.invoices import service as invoicing
from billing.invoices.schemas import LineOut, line_out, rated_line_out
from metering.api.pagination import decode_cursor, encode_cursor
from metering.auth.service import Principal
from metering.config import Settings
from metering.core.clock import from_ms, parse_period, rfc3339, to_ms, utc_now
from metering.core.money import fmt, gib_seconds, mul, vcpu_seconds
from metering.core.usage import LifecycleEvent, LifecycleKind, build_timeline
from metering.errors import BadRequest, NotFound
from metering.executions import repository as executions_repo
from metering.usage import from_events

USAGE_KINDS = ("usage_vcpu", "usage_memory")
# Executions read per step while a page fills (some may have nothing inside the line's time).
BATCH = 200


@dataclass(frozen=True, slots=True)
class Charge:
    """One usage line and where its executions come from."""

    team_id: str
    line: LineOut
    kind: str
    unit_price: Decimal
    currency: str
    windows: tuple[from_events.Window, ...]
    received_by: datetime | None  # None: as things stand now
    now: datetime


def _windows(session: Session, team_id: str, period: str, version_id: str | None,
             end: datetime | None = None) -> tuple[from_events.Window, ...]:
    """The stretches of the month (up to `end`) when the team's prices were `version_id`."""
    start, month_end = parse_period(period)
    end = min(end or month_end, month_end)
    schedule = invoicing.price_schedules(session, [team_id], start, end)[team_id]
    bounds = [start, *schedule.cuts(start, end), end]
    return tuple(from_events.Window(team_id, lo, hi, index)
                 for index, (lo, hi) in enumerate(pairwise(bounds))
                 if version_id is None or schedule.at(lo).version_id == version_id)


def _check_usage_line(kind: str, position: int) -> None:
    if kind not in USAGE_KINDS:
        raise BadRequest(f"line {position} is a {kind.replace('_', ' ')} line; only usage "
                         "lines (vCPU time, memory) are made of executions")


def invoice_charge(session: Session, principal: Principal, invoice_id: str, position: int
                   ) -> Charge:
    """A stored invoice's usage line; another team's invoice (or a draft) answers 404."""
    row = invoice_repo.get_invoice(session, invoice_id)
    if row is None or (row.status == "draft" and principal.role == "team") \
            or not principal.can_read_team(row.team_id):
        if row is not None and principal.role not in ("team", "finance", "admin"):
            principal.require("team", "finance")
        raise NotFound(f"no invoice {invoice_id}")
    lines = invoice_repo.lines_of(session, [row.id]).get(row.id, [])
    line = next((x for x in lines if x.position == position), None)
    if line is None:
        raise NotFound(f"invoice {row.number or row.id} has no line {position}")
    _check_usage_line(line.kind, position)
    read_at, made_at = invoice_repo.read_instants(session, row.id)
    return Charge(
        team_id=row.team_id, line=line_out(line, row.currency), kind=line.kind,
        unit_price=line.unit_price, currency=row.currency,
        windows=_windows(session, row.team_id, row.period, line.price_version_id),
        received_by=read_at, now=made_at)


def upcoming_charge(session: Session, principal: Principal, team_id: str, position: int,
                    settings: Settings) -> Charge:
    """A line of the open month's invoice, rated as of now."""
    if not principal.can_read_team(team_id):
        if principal.role == "team":
            raise NotFound(f"no team {team_id}")
        principal.require("team", "finance")
    now = utc_now()
    rated = invoicing.upcoming(session, team_id, now, settings)
    lines: Sequence[InvoiceLine] = rated.rated.lines
    if not 1 <= position <= len(lines):
        raise NotFound(f"the upcoming invoice has no line {position}")
    line = lines[position - 1]
    _check_usage_line(line.kind, position)
    return Charge(
        team_id=team_id, line=rated_line_out(position, line, rated.rated.currency),
        kind=line.kind, unit_price=line.unit_price, currency=rated.rated.currency,
        windows=_windows(session, team_id, rated.period, line.price_version_id, end=now),
        received_by=None, now=now)


def _row(charge: Charge, usage: from_events.ExecutionUsage) -> LineExecutionOut:
    quantity = vcpu_seconds(usage.vcpu_ms) if charge.kind == "usage_vcpu" \
        else gib_seconds(usage.mib_ms)
    return LineExecutionOut(
        execution_id=usage.execution_id, sandbox_id=usage.sandbox_id,
        template_id=usage.template_id, started_at=rfc3339(usage.start_at),
        ended_at=None if usage.running else rfc3339(usage.stop_at),
        end_inferred=usage.end_inferred and not usage.running, running=usage.running,
        vcpu=usage.vcpu, memory_mib=usage.memory_mib,
        seconds=fmt(Decimal(usage.ms) / 1000),
        vcpu_seconds=fmt(vcpu_seconds(usage.vcpu_ms)),
        gib_seconds=fmt(gib_seconds(usage.mib_ms)),
        quantity=fmt(quantity), cost=fmt(mul(quantity, charge.unit_price)),
    )


def _cursor(after: str | None) -> tuple[datetime, str] | None:
    if not after:
        return None
    parts = decode_cursor(after)
    try:
        return datetime.fromisoformat(str(parts[0])), str(parts[1])
    except (ValueError, IndexError) as exc:
        raise BadRequest("after: not a cursor this service issued") from exc


def _pages(session: Session, charge: Charge, after: tuple[datetime, str] | None,
           stale_after: timedelta, batch: int = BATCH
           ) -> Iterator[tuple[from_events.ExecutionUsage, Any]]:
    """The line's executions, newest start first, each with its position for a cursor."""
    if not charge.windows:
        return
    lo = min(w.start for w in charge.windows)
    hi = max(w.end for w in charge.windows)
    while True:
        candidates = from_events.candidates(session, charge.team_id, lo, hi, batch, after)
        if not candidates:
            return
        found = {u.execution_id: u for u in from_events.execution_usage(
            session, [c.execution_id for c in candidates], charge.windows, charge.now,
            stale_after, received_by=charge.received_by)}
        for candidate in candidates:
            usage = found.get(candidate.execution_id)
            if usage is not None and (usage.vcpu_ms or usage.mib_ms):
                yield usage, candidate
        if len(candidates) < batch:
            return
        last = candidates[-1]
        after = (last.start_at, last.execution_id)


def executions_page(session: Session, charge: Charge, settings: Settings, *, limit: int,
                    after: str | None) -> LineExecutionsPage:
    stale = timedelta(seconds=settings.stale_after_s)
    rows: list[LineExecutionOut] = []
    next_cursor = None
    # A page's worth and a few more (some may hold nothing inside the line's time).
    batch = min(limit + limit // 4 + 1, BATCH)
    for usage, candidate in _pages(session, charge, _cursor(after), stale, batch):
        if len(rows) == limit:
            break
        rows.append(_row(charge, usage))
        next_cursor = encode_cursor(candidate.start_at.isoformat(), candidate.execution_id)
    else:
        next_cursor = None
    return LineExecutionsPage(line=charge.line, as_of=rfc3339(charge.received_by or charge.now),
                              data=rows, next_cursor=next_cursor)


CSV_COLUMNS = ("execution_id", "sandbox_id", "template_id", "started_at", "ended_at",
               "end_inferred", "running", "vcpu", "memory_mib", "seconds", "vcpu_seconds",
               "gib_seconds", "quantity", "cost")


def executions_csv(session: Session, charge: Charge, settings: Settings) -> Iterator[list[str]]:
    """Every execution of the line, one row each, after a header."""
    yield list(CSV_COLUMNS)
    stale = timedelta(seconds=settings.stale_after_s)
    for usage, _ in _pages(session, charge, None, stale):
        row = _row(charge, usage).model_dump()
        yield ["" if row[c] is None else str(row[c]).lower() if isinstance(row[c], bool)
               else str(row[c]) for c in CSV_COLUMNS]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- one execution's events --------------------------------------------------------------------


def execution_events(session: Session, principal: Principal, execution_id: str
                     ) -> ExecutionEventsOut:
    """An execution's lifecycle events (oldest first) and the allocation they make; another
    team's execution answers 404."""
    owner = from_events.execution_owner(session, execution_id)
    if owner is None or not principal.can_read_team(owner[0]):
        if owner is not None and principal.role not in ("team", "finance", "admin"):
            principal.require("team", "finance")
        raise NotFound(f"no execution {execution_id}")
    team_id, sandbox_id = owner
    rows = sorted(executions_repo.lifecycle_rows(session, [execution_id]),
                  key=lambda r: (r[2], r[4], r[5]))
    events = [LifecycleEvent(kind=cast(LifecycleKind, r[1].rsplit(".", 1)[1]),
                             at_ms=to_ms(r[2]), vcpu=_int(r[3].get("vcpu")),
                             memory_mib=_int(r[3].get("memory_mib")), source=r[4],
                             event_id=r[5]) for r in rows]
    timeline = build_timeline(events)
    return ExecutionEventsOut(
        execution_id=execution_id, team_id=team_id, sandbox_id=sandbox_id,
        data=[LifecycleEventOut(id=r[5], source=r[4], type=r[1], time=rfc3339(r[2]),
                                data=r[3]) for r in rows],
        allocation=[AllocationOut(
            start=rfc3339(from_ms(s.start_ms)),
            end=rfc3339(from_ms(s.end_ms)) if s.end_ms is not None else None,
            vcpu=s.vcpu, memory_mib=s.memory_mib) for s in timeline.segments],
        next_cursor=None,
    )
