"""Explain a charge over HTTP: a usage line's executions (JSON pages or CSV) and an
execution's lifecycle events. A team key asking about another team's invoice or execution
gets 404, as if it did not exist."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from billing.charges import service
from billing.charges.schemas import ExecutionEventsOut, LineExecutionsPage
from metering.api.deps import PrincipalDep, SessionDep, SettingsDep

router = APIRouter(tags=["invoices"])

Limit = Annotated[int, Query(ge=1, le=1000)]
Position = Annotated[int, Path(ge=1, le=10_000)]
Format = Literal["json", "csv"]
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "with `format=csv`: every execution"}}


def _csv(rows: Iterable[list[str]], name: str) -> Response:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{name}.csv"'})


@router.get("/v1/invoices/{invoice_id}/lines/{position}/executions",
            response_model=LineExecutionsPage, responses=CSV_RESPONSE)
def line_executions(
    invoice_id: str, position: Position, session: SessionDep, principal: PrincipalDep,
    settings: SettingsDep, limit: Limit = 100, after: str | None = None,
    format: Format = "json",
) -> LineExecutionsPage | Response:
    """The executions a usage line is made of, newest start first, each with its usage and
    exact cost at the line's price (as the events stood when the invoice was made): their
    quantities add up to the line's quantity, their costs to its unrounded amount.
    `format=csv` answers every execution at once."""
    charge = service.invoice_charge(session, principal, invoice_id, position)
    if format == "csv":
        return _csv(service.executions_csv(session, charge, settings),
                    f"invoice-{invoice_id}-line-{position}")
    return service.executions_page(session, charge, settings, limit=limit, after=after)


@router.get("/v1/teams/{team_id}/invoices/upcoming/lines/{position}/executions",
            response_model=LineExecutionsPage, responses=CSV_RESPONSE)
def upcoming_line_executions(
    team_id: str, position: Position, session: SessionDep, principal: PrincipalDep,
    settings: SettingsDep, limit: Limit = 100, after: str | None = None,
    format: Format = "json",
) -> LineExecutionsPage | Response:
    """The same for a line of the open month's invoice, as of the moment of the read (the
    line is rated again at that moment and shown with the page)."""
    charge = service.upcoming_charge(session, principal, team_id, position, settings)
    if format == "csv":
        return _csv(service.executions_csv(session, charge, settings),
                    f"upcoming-{team_id}-line-{position}")
    return service.executions_page(session, charge, settings, limit=limit, after=after)


@router.get("/v1/executions/{execution_id}/events", response_model=ExecutionEventsOut)
def execution_events(execution_id: str, session: SessionDep, principal: PrincipalDep
                     ) -> ExecutionEventsOut:
    """An execution's lifecycle events, oldest first, and the allocation they make (from
    its start to its end, or open while it has none)."""
    return service.execution_events(session, principal, execution_id)
