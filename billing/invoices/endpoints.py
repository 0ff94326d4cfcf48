"""Invoices over HTTP: the dashboard's reads (one team) and finance's close, void, exports.

A team key sees only its own team's invoices; another team's answers 404, as if it did not
exist. Finance (and admin) see all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session, sessionmaker

from billing.invoices import close as month_close
from billing.invoices import export, service
from billing.invoices import repository as repo
from billing.invoices.schemas import (
    CloseIn,
    CloseOut,
    InvoiceOut,
    InvoicePage,
    RevenueOut,
    RevenuePage,
    UpcomingOut,
    VerificationOut,
    VoidOut,
    close_out,
    invoice_out,
    upcoming_out,
    verification_out,
)
from billing.verification import service as verification
from metering.api.deps import PrincipalDep, SessionDep, SettingsDep, team_reader
from metering.api.pagination import decode_cursor, encode_cursor
from metering.auth.service import Principal
from metering.core.clock import utc_now
from metering.errors import BadRequest, NotFound

router = APIRouter(tags=["invoices"])

PERIOD = r"^\d{4}-\d{2}$"
Status = Literal["finalized", "synced", "sync_failed", "paid", "payment_failed", "void"]
Limit = Annotated[int, Query(ge=1, le=500)]


def _cursor(after: str | None) -> tuple[datetime, str] | None:
    if not after:
        return None
    parts = decode_cursor(after)
    try:
        return datetime.fromisoformat(str(parts[0])), str(parts[1])
    except (ValueError, IndexError) as exc:
        raise BadRequest("after: not a cursor this service issued") from exc


def _page(session: Session, rows: list[Any], limit: int) -> InvoicePage:
    more = len(rows) > limit
    rows = rows[:limit]
    lines = repo.lines_of(session, [r.id for r in rows])
    last = rows[-1] if rows else None
    return InvoicePage(
        data=[invoice_out(r, lines.get(r.id, [])) for r in rows],
        next_cursor=encode_cursor(last.created_at.isoformat(), last.id)
        if more and last is not None else None)


def _visible(principal: Principal, invoice_id: str, team_id: str) -> None:
    if not principal.can_read_team(team_id):
        if principal.role == "team":
            raise NotFound(f"no invoice {invoice_id}")
        principal.require("team", "finance")


@router.get("/v1/teams/{team_id}/invoices", response_model=InvoicePage)
def list_team_invoices(
    team_id: str, session: SessionDep, principal: PrincipalDep, status: Status | None = None,
    limit: Limit = 50, after: str | None = None,
) -> InvoicePage:
    """A team's invoices, newest first, with their lines."""
    team_reader(principal, team_id)
    rows = repo.list_invoices(session, team_id=team_id, period=None, status=status,
                              limit=limit + 1, after=_cursor(after))
    return _page(session, rows, limit)


@router.get("/v1/teams/{team_id}/invoices/upcoming", response_model=UpcomingOut)
def get_upcoming(
    team_id: str, session: SessionDep, principal: PrincipalDep, settings: SettingsDep,
) -> UpcomingOut:
    """The open month rated as it stands now: plan fee, usage to date, true-up, adjustments
    for late usage of closed months, credits. Not stored; it changes as usage accrues."""
    team_reader(principal, team_id)
    now = utc_now()
    return upcoming_out(service.upcoming(session, team_id, now, settings), now)


@router.get("/v1/invoices", response_model=InvoicePage)
def list_invoices(
    session: SessionDep, principal: PrincipalDep,
    period: Annotated[str | None, Query(pattern=PERIOD)] = None,
    status: Status | None = None, team_id: str | None = None, limit: Limit = 100,
    after: str | None = None,
) -> InvoicePage:
    """Every team's invoices (finance), newest first; filter by month, status or team."""
    principal.require("finance")
    rows = repo.list_invoices(session, team_id=team_id, period=period, status=status,
                              limit=limit + 1, after=_cursor(after))
    return _page(session, rows, limit)


@router.get("/v1/invoices/export", response_class=Response, responses={
    200: {"content": {"text/csv": {}}, "description": "invoices and lines of the month"}})
def export_invoices(
    session: SessionDep, principal: PrincipalDep,
    period: Annotated[str, Query(pattern=PERIOD)], format: Literal["csv"] = "csv",
) -> Response:
    """A month's invoices and their lines as CSV, one row per line (finance)."""
    principal.require("finance")
    body = export.csv_text(session, period)
    return Response(body, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="invoices-{period}.{format}"'})


@router.post("/v1/invoices/close", response_model=CloseOut)
def close_month(
    body: CloseIn, request: Request, principal: PrincipalDep, settings: SettingsDep,
) -> CloseOut:
    """Close a month (finance): every team's invoice, once, numbered and finalized. Refused
    before the month's end plus the grace period unless `force`. `dry_run` rates without
    writing and lists what it would make."""
    principal.require("finance")
    sessions: sessionmaker[Session] = request.app.state.sessions
    summary = month_close.close_period(sessions, body.period, settings, dry_run=body.dry_run,
                                       force=body.force)
    return close_out(summary)


@router.get("/v1/invoices/{invoice_id}", response_model=InvoiceOut)
def get_invoice(invoice_id: str, session: SessionDep, principal: PrincipalDep
                ) -> InvoiceOut:
    """One invoice with its lines."""
    row = repo.get_invoice(session, invoice_id)
    if row is None or row.status == "draft":
        raise NotFound(f"no invoice {invoice_id}")
    _visible(principal, invoice_id, row.team_id)
    return invoice_out(row, repo.lines_of(session, [row.id]).get(row.id, []))


@router.get("/v1/invoices/{invoice_id}/verification", response_model=VerificationOut)
def get_verification(invoice_id: str, session: SessionDep, principal: PrincipalDep
                     ) -> VerificationOut:
    """The last time the invoice was re-derived from raw lifecycle events, plan versions and
    the credit ledger (by its close, after the close, or by finance's verify): whether it
    matched, and each difference. A draft held back by a difference is visible to finance
    only."""
    row = repo.get_invoice(session, invoice_id)
    if row is None or (row.status == "draft" and principal.role == "team"):
        raise NotFound(f"no invoice {invoice_id}")
    _visible(principal, invoice_id, row.team_id)
    return verification_out(verification.last_result(session, row.id))


@router.post("/v1/invoices/{invoice_id}/void", response_model=VoidOut)
def void_invoice(invoice_id: str, session: SessionDep, principal: PrincipalDep,
                 settings: SettingsDep) -> VoidOut:
    """Void an invoice (finance; finalized, synced, sync_failed or payment_failed only) and
    issue its correcting invoice, re-rated for the same team and month."""
    principal.require("finance")
    result = service.void_invoice(session, invoice_id, utc_now(), settings)
    ids = [result.voided_id] + ([result.correction.id] if result.correction else [])
    lines = repo.lines_of(session, ids)
    voided = repo.get_invoice(session, result.voided_id)
    correction = repo.get_invoice(session, result.correction.id) if result.correction else None
    return VoidOut(
        voided=invoice_out(voided, lines.get(result.voided_id, [])),
        correction=invoice_out(correction, lines.get(correction.id, []))
        if correction is not None else None)


@router.get("/v1/revenue", response_model=RevenuePage)
def get_revenue(
    session: SessionDep, principal: PrincipalDep,
    period: Annotated[str | None, Query(pattern=PERIOD)] = None,
) -> RevenuePage:
    """Revenue by month and plan from live invoices (finance); one month, or all."""
    principal.require("finance")
    return RevenuePage(data=[RevenueOut.model_validate(r) for r in export.revenue(session, period)],
                       next_cursor=None)
