"""Teams over HTTP: plan, limits, credits, balance (the answers are `service`'s)."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request

from billing.accounts import service
from billing.accounts.schemas import (
    AddOnIn,
    BalanceOut,
    CreditIn,
    GrantOut,
    GrantPage,
    OverrideIn,
    TeamIn,
    TeamOut,
)
from metering.api.deps import CredentialsDep, PrincipalDep, SessionDep, in_worker

router = APIRouter(tags=["teams"])


@router.get("/v1/teams/{team_id}", response_model=TeamOut)
def get_team(team_id: str, session: SessionDep, principal: PrincipalDep) -> TeamOut:
    """Plan, effective limits (plan + overrides + add-ons now) and blocked state."""
    return service.read_team(session, principal, team_id)


@router.put("/v1/teams/{team_id}", response_model=TeamOut)
def put_team(team_id: str, body: TeamIn, session: SessionDep,
             principal: PrincipalDep) -> TeamOut:
    """Create or update a team. A plan change takes effect at `effective_at` (default now; a
    past time brings existing customers over); a new Hobby team gets its $100 grant then.
    `spend_limit: null` removes the limit; leaving the field out keeps it."""
    principal.require("finance")
    return service.put_team(session, team_id, body)


@router.post("/v1/teams/{team_id}/credits", response_model=GrantOut, status_code=201)
def post_credit(
    team_id: str, body: CreditIn, session: SessionDep, principal: PrincipalDep,
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> GrantOut:
    """Grant credit. Burn-down order: lower priority number first, then soonest expiry.
    An `Idempotency-Key` header makes a retried grant happen once."""
    principal.require("finance")
    return service.grant(session, team_id, body, idempotency_key)


@router.get("/v1/teams/{team_id}/credits", response_model=GrantPage)
def list_credits(team_id: str, session: SessionDep, principal: PrincipalDep) -> GrantPage:
    """The ledger's grants in burn-down order, with what invoices applied of each."""
    return service.grants(session, principal, team_id)


@router.get("/v1/teams/{team_id}/balance", response_model=BalanceOut)
async def get_balance(team_id: str, request: Request,
                      credentials: CredentialsDep) -> BalanceOut:
    """Credit granted, used and remaining, live: what running sandboxes accrued up to now
    counts. Amounts are rounded to cents for display; enforcement uses the exact figures."""
    return await in_worker(request, credentials,
                           lambda session, principal: service.read_balance(
                               session, principal, team_id))


@router.post("/v1/teams/{team_id}/addons", response_model=TeamOut, status_code=201)
def post_addon(team_id: str, body: AddOnIn, session: SessionDep,
               principal: PrincipalDep) -> TeamOut:
    """Add to one limit for a window, e.g. +100 concurrent from a date to a date."""
    principal.require("finance")
    return service.add_addon(session, team_id, body)


@router.post("/v1/teams/{team_id}/overrides", response_model=TeamOut, status_code=201)
def post_override(team_id: str, body: OverrideIn, session: SessionDep,
                  principal: PrincipalDep) -> TeamOut:
    """Replace some of the plan's limits for this team (optionally within a window)."""
    principal.require("finance")
    return service.add_override(session, team_id, body)
