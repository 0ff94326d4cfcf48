"""Finance's exports: a month's invoices and lines as CSV, and the revenue summary.

The CSV has one row per invoice line, the invoice's columns repeated on each (what a
spreadsheet or an accounting import wants); an invoice without lines still gets one row.
Amounts are exact decimal strings with the currency's minor digits.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy.orm import Session

from billing.core.wording import UNITS
from billing.invoices import repository as repo
from billing.invoices.schemas import price_text
from metering.core.clock import rfc3339
from metering.core.money import add, fmt, fmt_minor

# One naming for every export of invoices (the CLI's and the dashboard's are this one).
CSV_COLUMNS = (
    "invoice_number", "invoice_id", "team_id", "period", "invoice_kind", "corrects_invoice_id",
    "status", "currency", "subtotal", "credits_applied", "total", "finalized_at",
    "stripe_invoice_id", "stripe_status", "line_position", "line_kind", "line_description",
    "line_service_start", "line_service_end", "line_quantity", "line_unit", "line_unit_price",
    "line_amount", "line_period", "line_plan_code", "line_metadata",
)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def neutralise_formula(text: str) -> str:
    """A cell a spreadsheet would read as a formula is shown as text (a leading `'`):
    one starting with `= + - @`, also after leading spaces or line breaks (which some
    spreadsheets skip), or starting with a tab or line break."""
    if text.startswith(_FORMULA_START) or text.lstrip(" \t\r\n").startswith(_FORMULA_START):
        return "'" + text
    return text


def _text(value: str | None) -> str:
    """Free text (team ids come from events) never starts like a spreadsheet formula."""
    if not value:
        return ""
    return neutralise_formula(value)


def csv_rows(session: Session, period: str) -> Iterator[list[str]]:
    """The header, then one row per line of the month's invoices (drafts excluded)."""
    yield list(CSV_COLUMNS)
    for r in repo.export_rows(session, period):
        c = r.currency
        has_line = r.position is not None
        yield [
            _text(r.number), r.id, _text(r.team_id), r.period, r.kind, r.corrects_invoice_id or "",
            r.status, c, fmt_minor(r.subtotal, c), fmt_minor(r.credits_applied, c),
            fmt_minor(r.total, c), rfc3339(r.finalized_at) if r.finalized_at else "",
            r.stripe_invoice_id or "", r.stripe_status or "",
            str(r.position) if has_line else "", r.line_kind or "", _text(r.description),
            rfc3339(r.service_start) if r.service_start else "",
            rfc3339(r.service_end) if r.service_end else "",
            fmt(r.quantity) if has_line else "", UNITS.get(r.line_kind or "", ""),
            price_text(r.unit_price, c) if has_line else "",
            fmt_minor(r.amount, c) if has_line else "", r.line_period or "",
            r.plan_code or "",
            orjson.dumps(r.details, option=orjson.OPT_SORT_KEYS).decode() if r.details else "",
        ]


def csv_text(session: Session, period: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(csv_rows(session, period))
    return buffer.getvalue()


def revenue(session: Session, period: str | None) -> list[dict[str, Any]]:
    """Per month and currency: invoice totals, and charges by plan (fees, usage, true-ups;
    adjustments carry no plan and show under `plan_code: null`). Credits are in the totals."""
    totals, by_plan = repo.revenue_rows(session, period)
    plans: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in by_plan:
        plans[(r.period, r.currency)].append(r)
    out: list[dict[str, Any]] = []
    for t in totals:
        c = t.currency
        out.append({
            "period": t.period, "currency": c, "invoices": int(t.invoices),
            "subtotal": fmt_minor(t.subtotal, c),
            "credits_applied": fmt_minor(t.credits_applied, c),
            "carry_forward": fmt_minor(t.carry_forward, c), "total": fmt_minor(t.total, c),
            "by_plan": [{
                "plan_code": p.plan_code, "invoices": int(p.invoices),
                "plan_fees": fmt_minor(p.plan_fees, c), "usage": fmt_minor(p.usage, c),
                "commitment_true_up": fmt_minor(p.commitment_true_up, c),
                "adjustments": fmt_minor(p.adjustments, c),
                "amount": fmt_minor(add(p.plan_fees, p.usage, p.commitment_true_up,
                                        p.adjustments), c),
            } for p in plans.get((t.period, c), [])],
        })
    return out
