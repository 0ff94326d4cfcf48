"""Teams as finance and the dashboard see them: plan, limits, credits, balance."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from billing.credits import repository as credit_repo
from billing.credits import service as credits
from billing.plans import service
from billing.plans.endpoints import LimitsOut
from billing.plans.models import AddOnRow, LimitOverrideRow
from metering.api.deps import (
    CredentialsDep,
    PrincipalDep,
    SessionDep,
    aware,
    in_worker,
    team_reader,
)
from metering.auth.service import Principal
from metering.core.clock import rfc3339, utc_now
from metering.core.limits import LIMIT_FIELDS
from metering.core.money import fmt_minor
from metering.errors import BadRequest, NotFound
from metering.teams.models import Team

router = APIRouter(tags=["teams"])


class TeamOut(BaseModel):
    id: str
    name: str | None
    email: str | None
    plan: str
    credit_enforced: bool
    limits: LimitsOut
    spend_limit: str | None
    collection_method: str
    blocked: bool
    blocked_reason: str | None
    blocked_at: str | None
    auto_created: bool
    created_at: str


def team_out(session: Any, team: Team) -> dict[str, Any]:
    limits = service.BILLING.limits(session, team.id, utc_now())
    return {
        "id": team.id, "name": team.name, "email": team.email, "plan": limits.plan_code,
        "credit_enforced": limits.credit_enforced,
        "limits": {str(k): v for k, v in limits.limits.as_dict().items()},
        "spend_limit": fmt_minor(team.spend_limit) if team.spend_limit is not None else None,
        "collection_method": team.collection_method,
        "blocked": team.blocked_at is not None, "blocked_reason": team.blocked_reason,
        "blocked_at": rfc3339(team.blocked_at) if team.blocked_at else None,
        "auto_created": team.auto_created, "created_at": rfc3339(team.created_at),
    }


def get_team_or_404(session: Session, team_id: str) -> Team:
    team = session.get(Team, team_id)
    if team is None:
        raise NotFound(f"no team {team_id}")
    return team


@router.get("/v1/teams/{team_id}", response_model=TeamOut)
def get_team(team_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Plan, effective limits (plan + overrides + add-ons now) and blocked state."""
    team_reader(principal, team_id)
    return team_out(session, get_team_or_404(session, team_id))


class TeamIn(BaseModel):
    model_config = {"json_schema_extra": {"example": {
        "name": "Acme", "email": "billing@acme.example", "plan": "pro",
        "effective_at": "2026-10-01T00:00:00Z", "spend_limit": "500"}}}

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    plan: str | None = Field(default=None, max_length=64)
    effective_at: datetime | None = None
    spend_limit: Decimal | None = Field(default=None, ge=0)
    collection_method: Literal["charge_automatically", "send_invoice"] | None = None


@router.put("/v1/teams/{team_id}", response_model=TeamOut)
def put_team(team_id: str, body: TeamIn, session: SessionDep,
             principal: PrincipalDep) -> dict[str, Any]:
    """Create or update a team. A plan change takes effect at `effective_at` (default now; a
    past time brings existing customers over); a new Hobby team gets its $100 grant then.
    `spend_limit: null` removes the limit; leaving the field out keeps it."""
    principal.require("finance")
    if len(team_id) > 128 or not team_id:
        raise BadRequest("team_id: 1 to 128 characters")
    at = aware(body.effective_at, "effective_at") or utc_now()
    team = service.put_team(session, team_id, service.TeamUpdate(
        name=body.name, email=body.email, plan=body.plan, effective_at=at,
        spend_limit=body.spend_limit,
        clear_spend_limit="spend_limit" in body.model_fields_set and body.spend_limit is None,
        collection_method=body.collection_method))
    return team_out(session, team)


class CreditIn(BaseModel):
    model_config = {"json_schema_extra": {"example": {
        "amount": "25.00", "expires_at": "2027-01-01T00:00:00Z", "priority": 0,
        "reason": "launch promotion"}}}

    amount: Decimal = Field(gt=0, max_digits=20, decimal_places=6)
    expires_at: datetime | None = None
    priority: int = Field(default=0, ge=0, le=1000)
    reason: str | None = Field(default=None, max_length=500)


class GrantOut(BaseModel):
    id: str
    amount: str
    applied: str
    remaining: str
    priority: int
    granted_at: str
    expires_at: str | None
    reason: str | None
    kind: str


class GrantPage(BaseModel):
    data: list[GrantOut]
    next_cursor: str | None


def grant_out(g: credit_repo.GrantBalance) -> dict[str, Any]:
    return {"id": g.id, "amount": fmt_minor(g.amount), "applied": fmt_minor(g.applied),
            "remaining": fmt_minor(g.remaining), "priority": g.priority,
            "granted_at": rfc3339(g.granted_at),
            "expires_at": rfc3339(g.expires_at) if g.expires_at else None,
            "reason": g.reason, "kind": g.kind}


@router.post("/v1/teams/{team_id}/credits", response_model=GrantOut, status_code=201)
def post_credit(
    team_id: str, body: CreditIn, session: SessionDep, principal: PrincipalDep,
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> dict[str, Any]:
    """Grant credit. Burn-down order: lower priority number first, then soonest expiry.
    An `Idempotency-Key` header makes a retried grant happen once."""
    principal.require("finance")
    get_team_or_404(session, team_id)
    grant_id = credits.grant_credit(
        session, team_id, body.amount, at=utc_now(),
        expires_at=aware(body.expires_at, "expires_at"), priority=body.priority,
        reason=body.reason,
        idempotency_key=f"manual:{team_id}:{idempotency_key}" if idempotency_key else None)
    found = [g for g in credit_repo.balances(session, team_id) if g.id == grant_id]
    return grant_out(found[0])


@router.get("/v1/teams/{team_id}/credits", response_model=GrantPage)
def list_credits(team_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """The ledger's grants in burn-down order, with what invoices applied of each."""
    team_reader(principal, team_id)
    get_team_or_404(session, team_id)
    return {"data": [grant_out(g) for g in credit_repo.balances(session, team_id)],
            "next_cursor": None}


class BalanceOut(BaseModel):
    team_id: str
    currency: str
    credit_granted: str
    credit_used: str
    credit_remaining: str
    credit_enforced: bool
    month_to_date_spend: str
    spend_limit: str | None
    burn_rate_per_hour: str
    projected_exhaustion_at: str | None
    as_of: str


@router.get("/v1/teams/{team_id}/balance", response_model=BalanceOut)
async def get_balance(team_id: str, request: Request,
                      credentials: CredentialsDep) -> dict[str, Any]:
    """Credit granted, used and remaining, live: what running sandboxes accrued up to now
    counts. Amounts are rounded to cents for display; enforcement uses the exact figures."""

    return await in_worker(request, credentials,
                           lambda session, principal: read_balance(team_id, session, principal))


def read_balance(team_id: str, session: Session, principal: Principal) -> dict[str, Any]:
    """The balance as the endpoint answers it (also used by the dashboard in-process)."""
    team_reader(principal, team_id)
    now = utc_now()
    limits, standing = service.BILLING.view(session, team_id, now, must_exist=True)
    remaining = standing.credit_granted - standing.credit_used
    exhaustion = credits.projected_exhaustion(remaining, standing.burn_rate_per_hour, now) \
        if standing.credit_granted > 0 else None
    return {
        "team_id": team_id, "currency": standing.currency,
        "credit_granted": fmt_minor(standing.credit_granted),
        "credit_used": fmt_minor(standing.credit_used),
        "credit_remaining": fmt_minor(max(remaining, Decimal(0))),
        "credit_enforced": limits.credit_enforced,
        "month_to_date_spend": fmt_minor(standing.month_spend),
        "spend_limit": fmt_minor(standing.spend_limit) if standing.spend_limit is not None
        else None,
        "burn_rate_per_hour": fmt_minor(standing.burn_rate_per_hour),
        "projected_exhaustion_at": rfc3339(exhaustion) if exhaustion else None,
        "as_of": rfc3339(now),
    }


class AddOnIn(BaseModel):
    field: Literal["max_execution_s", "concurrency", "starts_per_second", "max_vcpu",
                   "max_memory_mib", "max_disk_mib"]
    delta: int = Field(gt=0, le=10**6)
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class OverrideIn(BaseModel):
    max_execution_s: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=0)
    starts_per_second: int | None = Field(default=None, ge=0)
    max_vcpu: int | None = Field(default=None, ge=1)
    max_memory_mib: int | None = Field(default=None, ge=1)
    max_disk_mib: int | None = Field(default=None, ge=0)
    starts_at: datetime | None = None
    ends_at: datetime | None = None


def _window(starts_at: datetime | None, ends_at: datetime | None) -> None:
    aware(starts_at, "starts_at")
    aware(ends_at, "ends_at")
    if starts_at and ends_at and ends_at <= starts_at:
        raise BadRequest("ends_at: must be after starts_at")


@router.post("/v1/teams/{team_id}/addons", response_model=TeamOut, status_code=201)
def post_addon(team_id: str, body: AddOnIn, session: SessionDep,
               principal: PrincipalDep) -> dict[str, Any]:
    """Add to one limit for a window, e.g. +100 concurrent from a date to a date."""
    principal.require("finance")
    team = get_team_or_404(session, team_id)
    _window(body.starts_at, body.ends_at)
    session.add(AddOnRow(team_id=team_id, field=body.field, delta=body.delta,
                         starts_at=body.starts_at, ends_at=body.ends_at))
    session.flush()
    return team_out(session, team)


@router.post("/v1/teams/{team_id}/overrides", response_model=TeamOut, status_code=201)
def post_override(team_id: str, body: OverrideIn, session: SessionDep,
                  principal: PrincipalDep) -> dict[str, Any]:
    """Replace some of the plan's limits for this team (optionally within a window)."""
    principal.require("finance")
    team = get_team_or_404(session, team_id)
    _window(body.starts_at, body.ends_at)
    values = body.model_dump(include={str(f) for f in LIMIT_FIELDS}, exclude_none=True)
    if not values:
        raise BadRequest("an override needs at least one limit field")
    session.add(LimitOverrideRow(team_id=team_id, starts_at=body.starts_at,
                                 ends_at=body.ends_at, **values))
    session.flush()
    return team_out(session, team)
