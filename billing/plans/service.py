"""Plans, team plan assignments and billing's implementation of metering's `Billing`."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import repository as team_settings
from billing.core import plan_versions as core
from billing.core.rating import quote
from billing.credits import service as credits
from billing.plans import repository as repo
from billing.plans.models import Plan, PlanVersion
from billing.plans.schemas import PlanOut, PlanPage, PlanVersionIn, PlanVersionOut, QuoteOut
from metering.config import get_settings
from metering.core.clock import EPOCH, utc_now
from metering.core.limits import LIMIT_FIELDS, effective_limits
from metering.core.money import UnitPrices, add, fmt, fmt_minor
from metering.core.pricing import PriceSchedule
from metering.db import pipeline
from metering.errors import BadRequest, NotFound
from metering.plugins import Prefetch, Standing, TeamLimits, TeamRead
from metering.teams.models import Team

log = logging.getLogger(__name__)


def _version_in(versions: dict[str, list[core.Version]], ctx: repo.TeamContext,
                at: datetime) -> core.Version:
    """The plan version in force for the team at `at`."""
    plan = core.plan_at(ctx.assignments, at, get_settings().default_plan)
    return core.version_at(versions[plan], at)


def _limits_of(version: core.Version, ctx: repo.TeamContext, at: datetime) -> TeamLimits:
    """The version's limits with the team's overrides and add-ons at `at`."""
    limits = effective_limits(version.limits, ctx.overrides, ctx.addons, at)
    return TeamLimits(version.plan_code, limits, version.credit_enforced)


def _own(read: TeamRead | None) -> repo.TeamContext | None:
    """Billing's read of a team, back from metering's admission round trip."""
    if read is None or isinstance(read, repo.TeamContext):
        return read
    raise TypeError(f"not billing's read of a team: {type(read).__name__}")


class PlanBilling:
    """Prices, limits and standing from plan versions, assignments and the credit ledger."""

    def price_schedule(
        self, session: Session, team_id: str, start: datetime, end: datetime
    ) -> PriceSchedule:
        return core.price_schedule(repo.assignments(session, team_id), repo.all_versions(session),
                                   get_settings().default_plan, start, end)

    def _version(self, session: Session, ctx: repo.TeamContext, at: datetime) -> core.Version:
        return _version_in(repo.all_versions(session), ctx, at)

    def _limits(self, session: Session, ctx: repo.TeamContext, at: datetime) -> TeamLimits:
        return _limits_of(self._version(session, ctx, at), ctx, at)

    def _schedule(self, session: Session, ctx: repo.TeamContext, now: datetime) -> PriceSchedule:
        return core.price_schedule(ctx.assignments, repo.all_versions(session),
                                   get_settings().default_plan, EPOCH,
                                   now + timedelta(days=1))

    def version_at(self, session: Session, team_id: str, at: datetime) -> core.Version:
        return self._version(session, repo.team_context(session, team_id), at)

    def limits(self, session: Session, team_id: str, at: datetime) -> TeamLimits:
        return self._limits(session, repo.team_context(session, team_id), at)

    def standing(self, session: Session, team_id: str, now: datetime) -> Standing:
        return self.view(session, team_id, now)[1]

    def admission_prefetch(self, team_id: str) -> Prefetch:
        return Prefetch(repo.CONTEXT_SQL, {"t": team_id}, repo.context_from_row)

    def admission_from_read(
        self, team_id: str, now: datetime, prefetched: TeamRead | None
    ) -> tuple[TeamLimits, Standing] | None:
        """Enough for a team whose plan stops at no credit and that has no spend limit: its
        limits and block come from the read, and nothing is to be added up. Plan versions come
        from this process's cache; when it has expired, None (the threaded path reads them)."""
        versions = repo.cached_versions()
        ctx = _own(prefetched)
        if versions is None or ctx is None:
            return None
        version = _version_in(versions, ctx, now)
        if version.credit_enforced or ctx.spend_limit is not None:
            return None
        zero = Decimal(0)
        standing = Standing(
            team_id=team_id, blocked=ctx.blocked_at is not None,
            blocked_reason=ctx.blocked_reason, credit_granted=zero, credit_used=zero,
            credit_remaining=None, month_spend=zero, spend_limit=None, burn_rate_per_hour=zero,
            currency=version.currency)
        return _limits_of(version, ctx, now), standing

    def admission(
        self, session: Session, team_id: str, now: datetime, prefetched: TeamRead | None = None
    ) -> tuple[TeamLimits, Standing]:
        return self.view(session, team_id, now, full=False, ctx=_own(prefetched))

    def view(
        self, session: Session, team_id: str, now: datetime, full: bool = True,
        ctx: repo.TeamContext | None = None, must_exist: bool = False,
    ) -> tuple[TeamLimits, Standing]:
        """Limits and standing from one read of the team; `full=False` computes only what an
        admission decides on (credit where enforced, spend under a limit, no burn rate).
        `must_exist`: a team that does not exist is a 404."""
        if ctx is None and not full:
            ctx = repo.team_context(session, team_id)  # what to read depends on the plan
        if ctx is not None:
            credit_enforced = self._version(session, ctx, now).credit_enforced
            need_credit = full or credit_enforced
            need_spend = full or ctx.spend_limit is not None
        else:
            need_credit = need_spend = True
        # One round trip for the team (unless known), its grants, its newest invoiced month
        # and what it runs now; usage follows in a second.
        reads = credits.ledger_reads(team_id, now, credit=need_credit, burn=full)
        if ctx is None:
            reads.insert(0, (repo.CONTEXT_SQL, {"t": team_id}))
        rows = pipeline(session, reads)
        if ctx is None:
            ctx = repo.context_from_row(rows.pop(0)[0])
        if must_exist and not ctx.exists:
            raise NotFound(f"no team {team_id}")
        ledger = credits.ledger_from_rows(rows, credit=need_credit, burn=full)
        limits = self._limits(session, ctx, now)
        version = self._version(session, ctx, now)
        standing = credits.standing(
            session, team_id, now, version.credit_enforced, version.currency, ctx,
            self._schedule(session, ctx, now), ledger, need_credit=need_credit,
            need_spend=need_spend, need_burn=full)
        return limits, standing

    def admission_many(
        self, session: Session, team_ids: Sequence[str], now: datetime
    ) -> dict[str, tuple[TeamLimits, Standing, PriceSchedule]]:
        """`admission` of many teams in three round trips whatever their number: the teams,
        the credit ledgers of those whose plan stops at no credit, and the usage of those
        whose credit or spend limit looks at it. Same figures as `admission`, team by team;
        a team whose plan data cannot be read is left out (the caller asks for it alone)."""
        if not team_ids:
            return {}
        versions = repo.all_versions(session)
        contexts = repo.team_contexts(session, team_ids)
        default = get_settings().default_plan
        found: dict[str, tuple[repo.TeamContext, core.Version, TeamLimits, PriceSchedule]] = {}
        for team_id in team_ids:
            try:
                ctx = contexts[team_id]
                version = _version_in(versions, ctx, now)
                schedule = core.price_schedule(ctx.assignments, versions, default, EPOCH,
                                               now + timedelta(days=1))
                found[team_id] = (ctx, version, _limits_of(version, ctx, now), schedule)
            except Exception:  # noqa: S112 - left out: the caller asks for it alone
                continue
        ledgers = credits.ledgers(
            session, [t for t, f in found.items() if f[1].credit_enforced], now)
        asks = [credits.StandingAsk(
            team_id, version.credit_enforced, version.currency, ctx, schedule,
            ledgers.get(team_id, credits.NO_LEDGER), need_credit=version.credit_enforced,
            need_spend=ctx.spend_limit is not None)
            for team_id, (ctx, version, _, schedule) in found.items()]
        standings = credits.standings(session, asks, now)
        return {t: (f[2], standings[t], f[3]) for t, f in found.items()}

    def teams_created(self, session: Session, team_ids: Sequence[str], at: datetime) -> None:
        on_teams_created(session, team_ids, at)


BILLING = PlanBilling()


def start_plan(session: Session, team_id: str, plan_code: str, at: datetime) -> None:
    """Put a team on a plan from `at`; a plan with a one-time credit grants it (once ever per
    team and plan) at that time."""
    versions = repo.all_versions(session, fresh=True)
    if plan_code not in versions:
        raise BadRequest(f"plan: no plan {plan_code!r}; known: {', '.join(sorted(versions))}")
    repo.add_assignment(session, team_id, plan_code, at)
    version = core.version_at(versions[plan_code], at)
    if version.one_time_credit > 0:
        credits.grant_credit(
            session, team_id, version.one_time_credit, at=at, reason=f"{plan_code} plan credit",
            kind="plan", idempotency_key=f"plan:{plan_code}:{team_id}",
            currency=version.currency)


def on_teams_created(session: Session, team_ids: Sequence[str], at: datetime) -> None:
    """Teams first seen in events or admissions start on the default plan."""
    for team_id in team_ids:
        start_plan(session, team_id, get_settings().default_plan, at)


@dataclass(frozen=True, slots=True)
class TeamUpdate:
    name: str | None
    email: str | None
    plan: str | None
    effective_at: datetime
    spend_limit: Decimal | None
    clear_spend_limit: bool
    collection_method: str | None


def put_team(session: Session, team_id: str, update: TeamUpdate) -> Team:
    team = session.get(Team, team_id, with_for_update=True)
    if team is None:
        team = Team(id=team_id, auto_created=False, created_at=update.effective_at)
        session.add(team)
        session.flush()
        plan = update.plan or get_settings().default_plan
        start_plan(session, team_id, plan, update.effective_at)
    elif update.plan is not None:
        current = core.plan_at(repo.assignments(session, team_id), update.effective_at,
                               get_settings().default_plan)
        if current != update.plan or not repo.assignments(session, team_id):
            start_plan(session, team_id, update.plan, update.effective_at)
    if update.name is not None:
        team.name = update.name
    if update.email is not None:
        team.email = update.email
    if update.spend_limit is not None:
        team.spend_limit = update.spend_limit
    elif update.clear_spend_limit:
        team.spend_limit = None
    if update.collection_method is not None:
        team_settings.set_collection_method(session, team_id, update.collection_method)
    team.auto_created = False
    session.flush()
    return team


PLAN_FIELDS = ("monthly_fee", "one_time_credit", "credit_enforced", "minimum_commitment",
               "vcpu_second_price", "gib_second_price", *LIMIT_FIELDS)


def put_plan_version(
    session: Session, code: str, name: str | None, effective_at: datetime,
    changes: dict[str, Any],
) -> PlanVersion:
    """Add a version of a plan effective from `effective_at`: fields not given carry over
    from the version in force then. A new plan needs every field."""
    plan = repo.plan(session, code)
    versions = repo.all_versions(session, fresh=True).get(code, [])
    if plan is None:
        missing = [f for f in PLAN_FIELDS if f not in changes]
        if missing:
            raise BadRequest(f"a new plan needs every field; missing: {', '.join(missing)}")
        session.add(Plan(code=code, name=name or code.title()))
        session.flush()
        base: dict[str, Any] = {}
    else:
        if name:
            plan.name = name
        current = core.version_at(versions, effective_at)
        base = {
            "monthly_fee": current.monthly_fee, "one_time_credit": current.one_time_credit,
            "credit_enforced": current.credit_enforced,
            "minimum_commitment": current.minimum_commitment,
            "vcpu_second_price": current.vcpu_second_price,
            "gib_second_price": current.gib_second_price,
            **{str(k): v for k, v in current.limits.as_dict().items()},
        }
    if any(v.effective_at == effective_at for v in versions):
        raise BadRequest(f"effective_at: plan {code} already has a version from that instant")
    values = {**base, **changes}
    row = PlanVersion(id="pv_" + secrets.token_hex(8), plan_code=code, effective_at=effective_at,
                      currency="usd", **values)
    session.add(row)
    session.flush()
    repo.forget_cache()
    return row


def get_plan(session: Session, code: str) -> tuple[Plan, list[PlanVersion]]:
    plan = repo.plan(session, code)
    if plan is None:
        raise NotFound(f"no plan {code}")
    versions = list(session.execute(select(PlanVersion).where(PlanVersion.plan_code == code)
                                    .order_by(PlanVersion.effective_at)).scalars())
    return plan, versions


# --- the answers of the plan endpoints -----------------------------------------------------


def plan_out(session: Session, code: str) -> PlanOut:
    plan, versions = get_plan(session, code)
    now = utc_now()
    current = [v for v in versions if v.effective_at <= now] or versions[:1]
    return PlanOut(code=plan.code, name=plan.name,
                   current=PlanVersionOut.of_version(current[-1]),
                   versions=[PlanVersionOut.of_version(v) for v in versions])


def plan_page(session: Session) -> PlanPage:
    return PlanPage(data=[plan_out(session, p.code) for p in repo.plans(session)],
                    next_cursor=None)


def new_version(session: Session, code: str, body: PlanVersionIn,
                effective_at: datetime | None) -> PlanOut:
    """A version of the plan from `effective_at` (default now); fields not given carry over."""
    changes = body.model_dump(exclude_none=True, exclude={"name", "effective_at"})
    put_plan_version(session, code, body.name, effective_at or utc_now(), changes)
    return plan_out(session, code)


def workload_quote(session: Session, code: str, vcpu: int, memory_mib: int, seconds: Decimal,
                   runs: int) -> QuoteOut:
    """What the workload costs on the plan now: usage at its prices plus its monthly fee."""
    plan, versions = get_plan(session, code)
    now = utc_now()
    version = ([v for v in versions if v.effective_at <= now] or versions[:1])[-1]
    try:
        q = quote(vcpu, memory_mib, seconds, runs,
                  UnitPrices(version.vcpu_second_price, version.gib_second_price,
                             version.currency))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return QuoteOut(
        plan=plan.code, currency=version.currency, vcpu=vcpu, memory_mib=memory_mib,
        seconds=fmt(seconds), runs=runs, vcpu_seconds=fmt(q.vcpu_seconds),
        gib_seconds=fmt(q.gib_seconds), vcpu_cost=fmt(q.vcpu_cost),
        memory_cost=fmt(q.memory_cost), usage_cost=fmt_minor(q.total),
        monthly_fee=fmt_minor(version.monthly_fee),
        total=fmt_minor(add(q.total, version.monthly_fee)))


def refresh_versions(sessions: sessionmaker[Session]) -> None:
    """Read the plan versions into this process's cache now."""
    with sessions() as session:
        repo.all_versions(session, fresh=True)


async def keep_versions_fresh(sessions: sessionmaker[Session]) -> None:
    """Refresh the plan-version cache every `REFRESH_SECONDS` until cancelled (the API
    process's lifespan runs it). A failed read only lets the cache age: admissions then read
    the versions themselves, as without this task."""
    while True:
        try:
            await anyio.to_thread.run_sync(refresh_versions, sessions)
        except Exception as exc:  # the cache is an optimisation, never fatal
            log.debug("plan versions not refreshed: %s", type(exc).__name__)
        await anyio.sleep(repo.REFRESH_SECONDS)
