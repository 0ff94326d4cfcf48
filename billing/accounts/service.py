"""Teams as finance and the dashboard see them: the answers of the team endpoints, which the
dashboard also calls in-process (with the signed-in key's principal)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from sqlalchemy.orm import Session

from billing.accounts import repository as settings_repo
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
from billing.credits import repository as credit_repo
from billing.credits import service as credits
from billing.plans import service as plans
from billing.plans.models import AddOnRow, LimitOverrideRow
from billing.plans.schemas import LimitsOut
from metering.api.deps import aware, team_reader
from metering.auth.service import Principal
from metering.core.clock import rfc3339, utc_now
from metering.core.limits import LIMIT_FIELDS
from metering.core.money import fmt_minor, minor_unit
from metering.errors import BadRequest, NotFound
from metering.teams.models import Team


def team_out(session: Session, team: Team) -> TeamOut:
    limits = plans.BILLING.limits(session, team.id, utc_now())
    return TeamOut(
        id=team.id, name=team.name, email=team.email, plan=limits.plan_code,
        credit_enforced=limits.credit_enforced, limits=LimitsOut.of(limits.limits),
        spend_limit=fmt_minor(team.spend_limit) if team.spend_limit is not None else None,
        collection_method=settings_repo.collection_method(session, team.id),
        blocked=team.blocked_at is not None, blocked_reason=team.blocked_reason,
        blocked_at=rfc3339(team.blocked_at) if team.blocked_at else None,
        auto_created=team.auto_created, created_at=rfc3339(team.created_at))


def get_team_or_404(session: Session, team_id: str) -> Team:
    team = session.get(Team, team_id)
    if team is None:
        raise NotFound(f"no team {team_id}")
    return team


def read_team(session: Session, principal: Principal, team_id: str) -> TeamOut:
    """Plan, effective limits and blocked state of a team the key may read."""
    team_reader(principal, team_id)
    return team_out(session, get_team_or_404(session, team_id))


def whole_minor_units(amount: Decimal, name: str, currency: str = "usd") -> None:
    """Money set by a person is whole cents: a fraction of a cent would be kept silently
    rounded, or turn a limit into zero."""
    try:
        whole = amount == amount.quantize(minor_unit(currency))
    except InvalidOperation:  # more digits than any amount of money has
        whole = False
    if not whole:
        raise BadRequest(f"{name}: must be a whole number of cents ({currency}), got {amount}")


def put_team(session: Session, team_id: str, body: TeamIn) -> TeamOut:
    if len(team_id) > 128 or not team_id:
        raise BadRequest("team_id: 1 to 128 characters")
    if body.spend_limit is not None:
        whole_minor_units(body.spend_limit, "spend_limit")
    at = aware(body.effective_at, "effective_at") or utc_now()
    team = plans.put_team(session, team_id, plans.TeamUpdate(
        name=body.name, email=body.email, plan=body.plan, effective_at=at,
        spend_limit=body.spend_limit,
        clear_spend_limit="spend_limit" in body.model_fields_set and body.spend_limit is None,
        collection_method=body.collection_method))
    return team_out(session, team)


def grant_out(g: credit_repo.GrantBalance) -> GrantOut:
    return GrantOut(id=g.id, amount=fmt_minor(g.amount), applied=fmt_minor(g.applied),
                    remaining=fmt_minor(g.remaining), priority=g.priority,
                    granted_at=rfc3339(g.granted_at),
                    expires_at=rfc3339(g.expires_at) if g.expires_at else None,
                    reason=g.reason, kind=g.kind)


def grant(session: Session, team_id: str, body: CreditIn, idempotency_key: str | None
          ) -> GrantOut:
    whole_minor_units(body.amount, "amount")
    get_team_or_404(session, team_id)
    grant_id = credits.grant_credit(
        session, team_id, body.amount, at=utc_now(),
        expires_at=aware(body.expires_at, "expires_at"), priority=body.priority,
        reason=body.reason,
        idempotency_key=f"manual:{team_id}:{idempotency_key}" if idempotency_key else None)
    found = [g for g in credit_repo.balances(session, team_id) if g.id == grant_id]
    return grant_out(found[0])


def grants(session: Session, principal: Principal, team_id: str) -> GrantPage:
    team_reader(principal, team_id)
    get_team_or_404(session, team_id)
    return GrantPage(data=[grant_out(g) for g in credit_repo.balances(session, team_id)],
                     next_cursor=None)


def read_balance(session: Session, principal: Principal, team_id: str) -> BalanceOut:
    """Credit granted, used and remaining, live (running sandboxes up to now included)."""
    team_reader(principal, team_id)
    now = utc_now()
    limits, standing = plans.BILLING.view(session, team_id, now, must_exist=True)
    remaining = standing.credit_granted - standing.credit_used
    exhaustion = credits.projected_exhaustion(remaining, standing.burn_rate_per_hour, now) \
        if standing.credit_granted > 0 else None
    return BalanceOut(
        team_id=team_id, currency=standing.currency,
        credit_granted=fmt_minor(standing.credit_granted),
        credit_used=fmt_minor(standing.credit_used),
        credit_remaining=fmt_minor(max(remaining, Decimal(0))),
        credit_enforced=limits.credit_enforced,
        month_to_date_spend=fmt_minor(standing.month_spend),
        spend_limit=fmt_minor(standing.spend_limit) if standing.spend_limit is not None
        else None,
        burn_rate_per_hour=fmt_minor(standing.burn_rate_per_hour),
        projected_exhaustion_at=rfc3339(exhaustion) if exhaustion else None,
        as_of=rfc3339(now))


def _window(body: AddOnIn | OverrideIn) -> None:
    aware(body.starts_at, "starts_at")
    aware(body.ends_at, "ends_at")
    if body.starts_at and body.ends_at and body.ends_at <= body.starts_at:
        raise BadRequest("ends_at: must be after starts_at")


def add_addon(session: Session, team_id: str, body: AddOnIn) -> TeamOut:
    team = get_team_or_404(session, team_id)
    _window(body)
    session.add(AddOnRow(team_id=team_id, field=body.field, delta=body.delta,
                         starts_at=body.starts_at, ends_at=body.ends_at))
    session.flush()
    return team_out(session, team)


def add_override(session: Session, team_id: str, body: OverrideIn) -> TeamOut:
    team = get_team_or_404(session, team_id)
    _window(body)
    values = body.model_dump(include={str(f) for f in LIMIT_FIELDS}, exclude_none=True)
    if not values:
        raise BadRequest("an override needs at least one limit field")
    session.add(LimitOverrideRow(team_id=team_id, starts_at=body.starts_at,
                                 ends_at=body.ends_at, **values))
    session.flush()
    return team_out(session, team)
