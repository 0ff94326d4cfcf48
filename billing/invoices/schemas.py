"""Invoices as the API shows them: money and quantities as exact decimal strings.

Amounts carry exactly the currency's minor digits ("151.37"); quantities and unit prices are
exact and carry no trailing zeros ("7200", "0.000014"), except that a unit price which is a
whole number of minor units shows them ("150.00", for a fee line).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from billing.core.rating import InvoiceLine as RatedLine
from billing.core.wording import UNITS
from billing.invoices.assemble import RatedTeam
from billing.invoices.close import CloseSummary
from billing.invoices.repository import line_metadata
from metering.core.clock import rfc3339
from metering.core.money import fmt, fmt_minor, round_minor


def price_text(value: Decimal, currency: str) -> str:
    return fmt_minor(value, currency) if value == round_minor(value, currency) else fmt(value)


class ServicePeriodOut(BaseModel):
    """The stretch of time a line bills for, [start, end)."""

    start: str
    end: str


class LineOut(BaseModel):
    """One invoice line; `amount` is rounded once, half-up, to the minor unit. The
    description is written for the customer (units, prices with currency, dates); internal
    ids (price and plan versions, credit grants) are in `metadata` only."""

    position: int
    kind: Literal["plan_fee", "usage_vcpu", "usage_memory", "commitment_true_up",
                  "adjustment_vcpu", "adjustment_memory", "credit", "carry_forward"]
    description: str
    quantity: str = Field(description="vCPU-seconds, GiB-seconds, or 1 for flat lines")
    unit: str | None = Field(description="`vCPU-s` or `GiB-s`; null for flat lines")
    unit_price: str
    amount: str
    currency: str
    service_period: ServicePeriodOut | None = Field(
        description="what the line bills for; null on lines stored before service periods")
    period: str | None = Field(None, description="on adjustment lines: the month corrected")
    plan_code: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict,
                                     description="price_version_id, plan_version_id, grant_id")


class StripeOut(BaseModel):
    invoice_id: str | None
    status: str | None


class InvoiceOut(BaseModel):
    """An invoice. `total` = sum of the lines = `subtotal` - `credits_applied` (+ a
    carry-forward line when adjustments made the month negative)."""

    id: str
    number: str | None
    team_id: str
    period: str
    kind: Literal["period", "correction"]
    corrects_invoice_id: str | None
    status: Literal["draft", "finalized", "synced", "sync_failed", "paid", "payment_failed",
                    "void"]
    currency: str
    subtotal: str
    credits_applied: str
    carry_forward: str
    total: str
    created_at: str
    finalized_at: str | None
    voided_at: str | None
    paid_at: str | None
    lines: list[LineOut]
    stripe: StripeOut | None = Field(description="the Stripe invoice once synced")


class InvoicePage(BaseModel):
    data: list[InvoiceOut]
    next_cursor: str | None


class UpcomingOut(BaseModel):
    """The open month rated as it stands (usage up to `as_of`); nothing is stored."""

    team_id: str
    period: str
    status: Literal["upcoming"]
    as_of: str
    currency: str
    subtotal: str
    credits_applied: str
    carry_forward: str
    total: str
    lines: list[LineOut]


class CloseIn(BaseModel):
    period: str = Field(pattern=r"^\d{4}-\d{2}$", examples=["2026-10"])
    dry_run: bool = False
    force: bool = Field(False, description="close before the grace period has passed")


class FailureOut(BaseModel):
    team_id: str
    reason: str


class PreviewOut(BaseModel):
    team_id: str
    currency: str
    subtotal: str
    credits_applied: str
    total: str
    lines: int


class CloseOut(BaseModel):
    """What a close did (or, in a dry run, would do)."""

    period: str
    dry_run: bool
    run_id: str | None
    teams_considered: int
    invoices_made: int
    already_existed: int
    total_amount: dict[str, str] = Field(description="sum of invoices made, per currency")
    skipped: dict[str, int] = Field(description="teams skipped, by reason")
    failures: list[FailureOut]
    seconds: float  # float-ok
    previews: list[PreviewOut] = Field(description="dry run only: the invoices it would make")


class VoidOut(BaseModel):
    voided: InvoiceOut
    correction: InvoiceOut | None


class RevenuePlanOut(BaseModel):
    plan_code: str | None = Field(description="null for lines of no plan (adjustments...)")
    invoices: int
    plan_fees: str
    usage: str
    commitment_true_up: str
    adjustments: str
    amount: str


class RevenueOut(BaseModel):
    """Live invoices (finalized onwards, not void) of one month and currency."""

    period: str
    currency: str
    invoices: int
    subtotal: str
    credits_applied: str
    carry_forward: str
    total: str
    by_plan: list[RevenuePlanOut]


class RevenuePage(BaseModel):
    data: list[RevenueOut]
    next_cursor: str | None


# --- conversions ---------------------------------------------------------------------------


def _service(start: datetime | None, end: datetime | None) -> dict[str, str] | None:
    if start is None or end is None:
        return None
    return {"start": rfc3339(start), "end": rfc3339(end)}


def line_out(row: Any, currency: str) -> LineOut:
    metadata = dict(row.details or {})
    if row.price_version_id:
        metadata.setdefault("price_version_id", row.price_version_id)
    return LineOut.model_validate({
        "position": row.position, "kind": row.kind, "description": row.description,
        "quantity": fmt(row.quantity), "unit": UNITS.get(row.kind),
        "unit_price": price_text(row.unit_price, currency),
        "amount": fmt_minor(row.amount, currency), "currency": currency,
        "service_period": _service(row.service_start, row.service_end),
        "period": row.period, "plan_code": row.plan_code,
        "metadata": {k: str(v) for k, v in metadata.items() if v},
    })


def rated_line_out(position: int, line: RatedLine, currency: str) -> LineOut:
    return LineOut.model_validate({
        "position": position, "kind": line.kind, "description": line.description,
        "quantity": fmt(line.quantity), "unit": UNITS.get(line.kind),
        "unit_price": price_text(line.unit_price, currency),
        "amount": fmt_minor(line.amount, currency), "currency": currency,
        "service_period": _service(line.service_start, line.service_end),
        "period": line.period, "plan_code": line.plan_code,
        "metadata": line_metadata(line),
    })


def _time(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment is not None else None


def invoice_out(row: Any, lines: list[Any]) -> InvoiceOut:
    c = row.currency
    synced = row.stripe_invoice_id is not None or row.stripe_status is not None
    return InvoiceOut.model_validate({
        "id": row.id, "number": row.number, "team_id": row.team_id, "period": row.period,
        "kind": row.kind, "corrects_invoice_id": row.corrects_invoice_id, "status": row.status,
        "currency": c, "subtotal": fmt_minor(row.subtotal, c),
        "credits_applied": fmt_minor(row.credits_applied, c),
        "carry_forward": fmt_minor(row.carry_forward, c), "total": fmt_minor(row.total, c),
        "created_at": rfc3339(row.created_at), "finalized_at": _time(row.finalized_at),
        "voided_at": _time(row.voided_at), "paid_at": _time(row.paid_at),
        "lines": [line_out(line, c) for line in lines],
        "stripe": {"invoice_id": row.stripe_invoice_id, "status": row.stripe_status}
        if synced else None,
    })


def upcoming_out(item: RatedTeam, as_of: datetime) -> UpcomingOut:
    r = item.rated
    c = r.currency
    return UpcomingOut.model_validate({
        "team_id": item.team_id, "period": item.period, "status": "upcoming",
        "as_of": rfc3339(as_of), "currency": c, "subtotal": fmt_minor(r.subtotal, c),
        "credits_applied": fmt_minor(r.credits_applied, c),
        "carry_forward": fmt_minor(r.carry_forward, c), "total": fmt_minor(r.total, c),
        "lines": [rated_line_out(i, line, c) for i, line in enumerate(r.lines, start=1)],
    })


def close_out(summary: CloseSummary) -> CloseOut:
    return CloseOut.model_validate({**summary.as_dict(), "previews": [
        {"team_id": p.team_id, "currency": p.currency,
         "subtotal": fmt_minor(p.subtotal, p.currency),
         "credits_applied": fmt_minor(p.credits_applied, p.currency),
         "total": fmt_minor(p.total, p.currency), "lines": p.lines}
        for p in summary.previews]})


class DifferenceOut(BaseModel):
    team_id: str
    invoice: str
    position: int | None = Field(description="the line; null for the invoice's total")
    line: str
    stored: str
    recomputed: str


class VerificationOut(BaseModel):
    """An invoice re-derived from raw events: `ok`, or `difference` with each one."""

    invoice_id: str
    team_id: str
    period: str
    status: Literal["ok", "difference"]
    verified_at: str
    source: Literal["close", "verify"]
    differences: list[DifferenceOut]
    error: str | None = Field(None, description="why the invoice could not be re-derived")


def verification_out(row: Any) -> VerificationOut:
    differences = [d for d in row.differences if "error" not in d]
    errors = [d["error"] for d in row.differences if "error" in d]
    return VerificationOut.model_validate({
        "invoice_id": row.invoice_id, "team_id": row.team_id, "period": row.period,
        "status": "ok" if row.ok else "difference", "verified_at": rfc3339(row.verified_at),
        "source": row.source, "differences": differences,
        "error": errors[0] if errors else None})
