"""Self-verifying months: every invoice re-derived by an independent path and compared.

Usage comes from the raw lifecycle events (`metering.events_usage`), integrated directly as
they stood when the invoice's close read usage, never from rollups, segments or what the
invoice stored about its usage; prices and plan fees from the plan versions and assignments;
credits and what earlier invoices billed from the ledger as it stood when the invoice was
made. The recomputed facts go through the same pure rating as the close (`billing.core.rating`,
property-tested on its own), and every line is compared with what is stored: kind, quantity,
unit price, amount and corrected month. A difference names the team, the invoice, the line,
and both figures.

The close runs the check on each invoice before finalizing it (`check_rated`): a difference
keeps that invoice a draft, out of Stripe, and raises `invoice.verification_failed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise, zip_longest
from typing import Any

from sqlalchemy.orm import Session

from billing.core.rating import InvoiceLine, RatedInvoice, rate
from billing.core.wording import TIMES, UNITS, grouped, money_text
from billing.invoices import repository as invoice_repo
from billing.invoices import service as invoicing
from billing.invoices.assemble import PlanVersionRow, TeamFacts, VersionUsage, prepare
from billing.verification import repository as repo
from metering import observability
from metering.config import Settings
from metering.core.clock import parse_period, utc_now
from metering.enforcement.outbox import NewMessage, enqueue_messages
from metering.errors import NotFound
from metering.usage import from_events as events_usage

# Above this many teams a month is read in one scan of the events rather than by team.
SCAN_ALL_TEAMS = 200


@dataclass(frozen=True, slots=True)
class Difference:
    """One line (position None: the invoice's total) that does not match."""

    team_id: str
    invoice: str  # its number, or its id while a draft
    position: int | None
    line: str
    stored: str
    recomputed: str

    def as_dict(self) -> dict[str, Any]:
        return {"team_id": self.team_id, "invoice": self.invoice, "position": self.position,
                "line": self.line, "stored": self.stored, "recomputed": self.recomputed}

    def text(self) -> str:
        where = f"line {self.position}" if self.position is not None else "total"
        return (f"{self.team_id} {self.invoice} {where} ({self.line}): stored {self.stored}, "
                f"recomputed {self.recomputed}")


@dataclass(frozen=True, slots=True)
class InvoiceCheck:
    invoice_id: str
    number: str | None
    team_id: str
    period: str
    differences: tuple[Difference, ...]
    error: str | None = None  # the facts could not be rated at all

    @property
    def ok(self) -> bool:
        return not self.differences and self.error is None

    def reason(self) -> str:
        if self.error:
            return f"cannot re-derive: {self.error}"
        return "; ".join(d.text() for d in self.differences)


@dataclass(slots=True)
class PeriodReport:
    period: str
    checks: list[InvoiceCheck]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


# --- comparing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    kind: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    period: str | None


def _figure(line: _Line | None, currency: str) -> str:
    if line is None:
        return "no line"
    unit = UNITS.get(line.kind)
    if unit is None:
        return money_text(line.amount, currency)
    return (f"{grouped(line.quantity)} {unit} {TIMES} {money_text(line.unit_price, currency)} = "
            f"{money_text(line.amount, currency)}")


def compare(team_id: str, label: str, stored: Sequence[_Line], stored_total: Decimal,
            rated: RatedInvoice) -> tuple[Difference, ...]:
    """Line by line, in order, then the total."""
    currency = rated.currency
    fresh = [_Line(x.kind, x.description, x.quantity, x.unit_price, x.amount, x.period)
             for x in rated.lines]
    out: list[Difference] = []
    for position, (old, new) in enumerate(zip_longest(stored, fresh), start=1):
        same = old is not None and new is not None and (
            old.kind, old.quantity, old.unit_price, old.amount, old.period) == (
            new.kind, new.quantity, new.unit_price, new.amount, new.period)
        if not same:
            name = (old or new).description if (old or new) is not None else ""
            out.append(Difference(team_id, label, position, name, _figure(old, currency),
                                  _figure(new, currency)))
    if stored_total != rated.total:
        out.append(Difference(team_id, label, None, "total", money_text(stored_total, currency),
                              money_text(rated.total, currency)))
    return tuple(out)


def _stored_lines(lines: Iterable[repo.StoredLine]) -> list[_Line]:
    return [_Line(x.kind, x.description, x.quantity, x.unit_price, x.amount, x.period)
            for x in lines]


def _rated_lines(lines: Iterable[InvoiceLine]) -> list[_Line]:
    return [_Line(x.kind, x.description, x.quantity, x.unit_price, x.amount, x.period)
            for x in lines]


# --- usage from the events ---------------------------------------------------------------------


def derived_usage(
    session: Session, period: str, team_ids: Sequence[str], *, read_at: datetime | None,
    now: datetime, settings: Settings,
) -> dict[str, tuple[VersionUsage, ...]]:
    """Each team's usage of the month per price version, integrated from the raw events as
    they stood at `read_at`, cut where the team's prices change."""
    if not team_ids:
        return {}
    start, end = parse_period(period)
    schedules = invoicing.price_schedules(session, list(team_ids), start, end)
    windows: list[events_usage.Window] = []
    version_of: dict[tuple[str, int], Any] = {}
    for team_id in team_ids:
        schedule = schedules[team_id]
        bounds = [start, *schedule.cuts(start, end), end]
        version_of[(team_id, 0)] = schedule.at(start)
        if len(bounds) > 2:
            for index, (lo, hi) in enumerate(pairwise(bounds)):
                windows.append(events_usage.Window(team_id, lo, hi, index))
                version_of[(team_id, index)] = schedule.at(lo)
    scope = None if len(team_ids) > SCAN_ALL_TEAMS else team_ids
    raw = events_usage.team_usage(
        session, start, end, now, timedelta(seconds=settings.stale_after_s),
        received_by=read_at, team_ids=scope, windows=windows)
    merged: dict[str, dict[str, list[Any]]] = defaultdict(dict)
    for (team_id, index), (vcpu_ms, mib_ms) in raw.items():
        version = version_of.get((team_id, index))
        if version is None:
            continue  # a team not asked about (one scan answers every team)
        slot = merged[team_id].setdefault(version.version_id, [version, 0, 0])
        slot[1] += vcpu_ms
        slot[2] += mib_ms
    return {team_id: tuple(VersionUsage(v.version_id, v.plan_code, v.prices, vcpu, mib)
                           for v, vcpu, mib in by_version.values() if vcpu or mib)
            for team_id, by_version in merged.items()}


def derived_late(
    session: Session, months_of: Mapping[str, Iterable[str]], *, read_at: datetime | None,
    now: datetime, settings: Settings,
) -> dict[str, dict[tuple[str, str], VersionUsage]]:
    """Per team: (earlier month, price version) -> its usage from the raw events."""
    by_month: dict[str, list[str]] = defaultdict(list)
    for team_id, months in months_of.items():
        for month in set(months):
            by_month[month].append(team_id)
    out: dict[str, dict[tuple[str, str], VersionUsage]] = defaultdict(dict)
    for month, teams in sorted(by_month.items()):
        usage = derived_usage(session, month, teams, read_at=read_at, now=now, settings=settings)
        for team_id, pieces in usage.items():
            for piece in pieces:
                out[team_id][(month, piece.price_version_id)] = piece
    return out


# --- the check ---------------------------------------------------------------------------------


def rerate(facts: TeamFacts, versions: Mapping[str, Sequence[PlanVersionRow]]
           ) -> RatedInvoice:
    return rate(prepare(facts, versions).rating_input)


def check_rated(
    facts: TeamFacts, versions: Mapping[str, Sequence[PlanVersionRow]], *,
    usage: tuple[VersionUsage, ...], late: Mapping[tuple[str, str], VersionUsage],
    rated: RatedInvoice, period: str,
) -> InvoiceCheck:
    """The close's check of an invoice it just rated: the same ledger facts with the usage
    re-derived from the events; any difference in the lines holds the invoice back."""
    fresh = dataclasses.replace(facts, usage=usage, late_usage=dict(late))
    try:
        again = rerate(fresh, versions)
    except (ValueError, TypeError) as exc:
        return InvoiceCheck("", None, facts.team_id, period, (), str(exc))
    diffs = compare(facts.team_id, "", _rated_lines(rated.lines), rated.total, again)
    return InvoiceCheck("", None, facts.team_id, period, diffs)


def for_invoice(check: InvoiceCheck, invoice_id: str, number: str | None) -> InvoiceCheck:
    """A check made before its invoice was stored, now naming it."""
    label = number or invoice_id
    return dataclasses.replace(
        check, invoice_id=invoice_id, number=number,
        differences=tuple(dataclasses.replace(d, invoice=label) for d in check.differences))


def check_invoices(session: Session, invoices: Sequence[repo.StoredInvoice],
                   settings: Settings) -> list[InvoiceCheck]:
    """Re-derive stored invoices of one month as of their closes and compare."""
    if not invoices:
        return []
    period = invoices[0].period
    start, end = parse_period(period)
    versions = invoice_repo.plan_versions(session)
    teams = sorted({i.team_id for i in invoices})
    assignments = invoice_repo.plan_assignments(session, start, end, teams)
    adjusted: dict[str, set[str]] = defaultdict(set)
    for invoice in invoices:
        adjusted[invoice.id] |= {x.period for x in invoice.lines
                                 if x.period is not None and x.kind.startswith("adjustment")}
    months = {period} | {m for ms in adjusted.values() for m in ms}
    billed = repo.billed_before(session, invoices, sorted(months))
    grants = repo.credits_before(session, invoices, start)
    # One read of the events per instant the closes read usage at (a close reads once).
    by_read: dict[tuple[datetime, datetime], list[repo.StoredInvoice]] = defaultdict(list)
    for invoice in invoices:
        by_read[(invoice.usage_read_at, invoice.made_at)].append(invoice)
    out: list[InvoiceCheck] = []
    for (read_at, made_at), group in sorted(by_read.items()):
        group_teams = sorted({i.team_id for i in group})
        usage = derived_usage(session, period, group_teams, read_at=read_at, now=made_at,
                              settings=settings)
        late = derived_late(session, {i.team_id: adjusted[i.id] for i in group if adjusted[i.id]},
                            read_at=read_at, now=made_at, settings=settings)
        for invoice in group:
            mine = billed.get(invoice.id, {})
            team_grants = grants.get(invoice.id, [])
            facts = TeamFacts(
                team_id=invoice.team_id, period_start=start, period_end=end,
                default_currency=settings.currency,
                assignments=tuple(assignments.get(invoice.team_id, ())),
                usage=usage.get(invoice.team_id, ()),
                billed_this_period={v: b for (m, v), b in mine.items() if m == period},
                late_usage=dict(late.get(invoice.team_id, {})),
                late_billed={k: b for k, b in mine.items() if k[0] in adjusted[invoice.id]},
                credits=tuple(g for _, g in team_grants),
                credit_currencies={g.grant_id: c for c, g in team_grants})
            label = invoice.number or invoice.id
            try:
                again = rerate(facts, versions)
            except (ValueError, TypeError) as exc:
                out.append(InvoiceCheck(invoice.id, invoice.number, invoice.team_id, period, (),
                                        str(exc)))
                continue
            out.append(InvoiceCheck(invoice.id, invoice.number, invoice.team_id, period,
                                    compare(invoice.team_id, label,
                                            _stored_lines(invoice.lines), invoice.total,
                                            again)))
    return out


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def record(session: Session, checks: Sequence[InvoiceCheck], source: str,
           at: datetime) -> None:
    """Store each result, count them, and raise `invoice.verification_failed` once per
    invoice and set of differences."""
    repo.store_results(session, [repo.ResultRow(
        c.invoice_id, c.team_id, c.period, at, source, c.ok,
        [d.as_dict() for d in c.differences] + ([{"error": c.error}] if c.error else []))
        for c in checks])
    failed = [c for c in checks if not c.ok]
    observability.observe_invoice_verifications(len(checks) - len(failed), len(failed))
    enqueue_messages(session, [NewMessage(
        type="invoice.verification_failed", team_id=c.team_id,
        key=f"invoice.verification_failed:{c.invoice_id}:{_digest(c.reason())}",
        payload={"invoice_id": c.invoice_id, "number": c.number, "team_id": c.team_id,
                 "period": c.period, "reason": c.reason(),
                 "differences": [d.as_dict() for d in c.differences]})
        for c in failed], at)


def verify_period(session: Session, period: str, settings: Settings, *,
                  team_id: str | None = None, store: bool = True,
                  now: datetime | None = None) -> PeriodReport:
    """Re-derive every invoice of `period` (of one team, if named) that is not void."""
    invoicing.parse_billing_period(period)
    invoices = repo.invoices_of(session, period, team_id)
    checks = check_invoices(session, invoices, settings)
    if store:
        record(session, checks, "verify", now or utc_now())
    return PeriodReport(period, checks)


def last_result(session: Session, invoice_id: str) -> repo.ResultRow:
    row = repo.last_result(session, invoice_id)
    if row is None:
        raise NotFound(f"invoice {invoice_id} has not been verified yet")
    return row
