"""Credits and standing: grants, their burn-down, and a team's live money position.

Live credit used = what finalized invoices applied from the grants + the cost of all usage not
yet on a finalized invoice, whatever its month (running sandboxes up to now included; a draft
is not invoiced). Grants burn in the ledger's order: lower priority number first, then
soonest expiry, then oldest.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from billing.credits import repository as repo
from billing.plans.repository import TeamContext
from metering.config import get_settings
from metering.core.clock import month_start
from metering.core.money import UnitPrices, add, mul
from metering.core.pricing import PriceSchedule
from metering.db import pipeline
from metering.errors import BadRequest
from metering.plugins import Standing
from metering.usage import (
    BucketUsage,
    bucket_usage_many,
    period_bounds,
    price_periods,
    price_totals,
    priced_bounds,
    priced_usage,
    running_allocations_from_rows,
    running_allocations_read,
    usage_by_price_period,
)


def grant_credit(
    session: Session, team_id: str, amount: Decimal, *, at: datetime,
    expires_at: datetime | None = None, priority: int = 0, reason: str | None = None,
    kind: str = "manual", idempotency_key: str | None = None, currency: str = "usd",
) -> str:
    if amount <= 0:
        raise BadRequest("amount: must be greater than 0")
    if expires_at is not None and expires_at <= at:
        raise BadRequest("expires_at: must be after the grant time")
    return repo.grant(session, grant_id="cg_" + secrets.token_hex(8), team_id=team_id,
                      amount=amount, currency=currency, priority=priority, granted_at=at,
                      expires_at=expires_at, reason=reason, kind=kind,
                      idempotency_key=idempotency_key)


def _stale() -> timedelta:
    return timedelta(seconds=get_settings().stale_after_s)


def usage_cost(session: Session, team_id: str, start: datetime, end: datetime,
               now: datetime, schedule: PriceSchedule | None = None) -> Decimal:
    """Exact (unrounded) cost of the team's usage in [start, end)."""
    if end <= start:
        return Decimal(0)
    total = Decimal(0)
    for priced in usage_by_price_period(session, team_id, start, end, now, _stale(), schedule):
        total = add(total, priced.period.prices.cost(priced.vcpu_ms, priced.mib_ms))
    return total


@dataclass(frozen=True, slots=True)
class Ledger:
    """The reads a standing starts from: the grants in burn-down order with what invoices
    applied of each, where uninvoiced usage begins (and what was billed after it), and what
    runs now (vCPU, MiB per sandbox)."""

    grants: list[repo.GrantBalance]
    unbilled: repo.Unbilled
    running: list[tuple[int, int]]


NO_LEDGER = Ledger([], repo.Unbilled(None, ()), [])  # what a standing without credit reads


def ledger_reads(team_id: str, now: datetime, *, credit: bool, burn: bool
                 ) -> list[tuple[Any, dict[str, Any]]]:
    """The statements of a `Ledger` (only those asked for), to pipeline with others."""
    reads: list[tuple[Any, dict[str, Any]]] = []
    if credit:
        reads += [(repo.BALANCES, {"t": team_id}),
                  (repo.UNBILLED, {"t": team_id, "now": now})]
    if burn:
        reads.append(running_allocations_read(team_id, now, _stale()))
    return reads


def ledgers(session: Session, team_ids: Sequence[str], now: datetime) -> dict[str, Ledger]:
    """The credit part of `Ledger` (grants and unbilled; no running allocations) of many
    teams, in one round trip of two statements whatever their number."""
    if not team_ids:
        return {}
    teams = sorted(set(team_ids))
    balances, unbilled = pipeline(session, [(repo.BALANCES_MANY, {"teams": teams}),
                                            (repo.UNBILLED_MANY, {"teams": teams, "now": now})])
    grants: dict[str, list[Any]] = {t: [] for t in teams}
    for row in balances:
        grants[row[0]].append(row[1:])
    since = {row[0]: row[1:] for row in unbilled}
    return {t: Ledger(repo.balances_from_rows(grants[t]),
                      repo.unbilled_from_rows([since[t]] if t in since else []), [])
            for t in teams}


def ledger_from_rows(rows: list[list[Any]], *, credit: bool, burn: bool) -> Ledger:
    grants: list[repo.GrantBalance] = []
    unbilled = repo.Unbilled(None, ())
    if credit:
        grants = repo.balances_from_rows(rows[0])
        unbilled = repo.unbilled_from_rows(rows[1])
    running = running_allocations_from_rows(rows[-1]) if burn else []
    return Ledger(grants, unbilled, running)


@dataclass(frozen=True, slots=True)
class _UsageAsk:
    """The usage a standing reads: `split`, [since, month start, now) priced per bucket (the
    months not invoiced yet and this month, in one read); `month`, this month's usage
    [month start, now) priced per version."""

    kind: str  # "split" | "month"
    bounds: list[datetime]


def _usage_ask(ledger: Ledger, now: datetime, *, need_credit: bool, need_spend: bool
               ) -> _UsageAsk | None:
    this_month = month_start(now)
    since = ledger.unbilled.since
    if need_credit and since is not None and since < this_month:
        return _UsageAsk("split", [since, this_month, now])
    # This month's usage (unless a close already invoiced it early) where credit or a spend
    # limit looks at it; nothing to read in the month's first instant.
    if ((need_credit and since is not None) or need_spend) and this_month < now:
        return _UsageAsk("month", [this_month, now])
    return None


def _standing_from(
    team_id: str, now: datetime, credit_enforced: bool, currency: str, ctx: TeamContext,
    schedule: PriceSchedule, ledger: Ledger, ask: _UsageAsk | None,
    usage: tuple[Decimal, Decimal], *, need_credit: bool, need_burn: bool,
) -> Standing:
    """The standing from the ledger and the usage read for `ask`: (cost before this month,
    cost this month). Skipped figures read as zero."""
    zero = Decimal(0)
    granted = used = burn = zero
    before, month_spend = usage
    if need_credit:
        grants = [g for g in ledger.grants if g.expires_at is None or g.expires_at > now]
        granted = add(*(g.amount for g in grants)) if grants else zero
        applied = add(*(g.applied for g in grants)) if grants else zero
        billed = add(*(UnitPrices(vp, gp).cost(v, m) for vp, gp, v, m in ledger.unbilled.billed))
        if ask is not None and ask.kind == "split":
            unbilled = add(before, month_spend, -billed)
        else:
            # Nothing open before this month: this month's usage less what live invoices
            # billed of it.
            opened = ledger.unbilled.since is not None
            unbilled = add(month_spend if opened else zero, -billed)
        used = add(applied, unbilled)
    if need_burn:
        prices = schedule.at(now).prices
        for vcpu, memory_mib in ledger.running:
            burn = add(burn, prices.cost(vcpu * 3_600_000, memory_mib * 3_600_000))
    return Standing(
        team_id=team_id, blocked=ctx.blocked_at is not None, blocked_reason=ctx.blocked_reason,
        credit_granted=granted, credit_used=used,
        credit_remaining=granted - used if credit_enforced else None,
        month_spend=month_spend, spend_limit=ctx.spend_limit,
        burn_rate_per_hour=burn, currency=currency,
    )


def _costs(ask: _UsageAsk, schedule: PriceSchedule, pieces: list[BucketUsage]
           ) -> tuple[Decimal, Decimal]:
    """(cost before this month, cost this month) from the usage read for `ask`."""
    if ask.kind == "split":
        used = price_totals(ask.bounds, schedule, {
            i: (p.vcpu_ms, p.mib_ms) for i, p in enumerate(pieces) if p.vcpu_ms or p.mib_ms})
        zero = (0, 0, Decimal(0))
        return used.get(0, zero)[2], used.get(1, zero)[2]
    total = Decimal(0)
    for priced in price_periods(schedule, pieces):
        total = add(total, priced.period.prices.cost(priced.vcpu_ms, priced.mib_ms))
    return Decimal(0), total


def standing(
    session: Session, team_id: str, now: datetime, credit_enforced: bool, currency: str,
    ctx: TeamContext, schedule: PriceSchedule, ledger: Ledger, *, need_credit: bool = True,
    need_spend: bool = True, need_burn: bool = True,
) -> Standing:
    """A team's money position now. The `need_*` flags let a hot path (admissions) skip what
    its decision does not look at; skipped figures read as zero. `ledger` holds the reads
    the figures asked for start from (see `ledger_reads`); usage is read here, in one round
    trip for both the unbilled months and this month."""
    zero = Decimal(0)
    ask = _usage_ask(ledger, now, need_credit=need_credit, need_spend=need_spend)
    usage = (zero, zero)
    if ask is not None and ask.kind == "split":
        before, month_spend = (b.cost for b in priced_usage(
            session, team_id, ask.bounds, now, _stale(), schedule))
        usage = (before, month_spend)
    elif ask is not None:
        usage = (zero, usage_cost(session, team_id, ask.bounds[0], ask.bounds[1], now,
                                  schedule))
    return _standing_from(team_id, now, credit_enforced, currency, ctx, schedule, ledger, ask,
                          usage, need_credit=need_credit, need_burn=need_burn)


@dataclass(frozen=True, slots=True)
class StandingAsk:
    """One team's part of `standings`: what `standing` takes besides the session."""

    team_id: str
    credit_enforced: bool
    currency: str
    ctx: TeamContext
    schedule: PriceSchedule
    ledger: Ledger
    need_credit: bool
    need_spend: bool


def standings(session: Session, asks: Sequence[StandingAsk], now: datetime
              ) -> dict[str, Standing]:
    """`standing` (without the burn rate) of many teams, their usage read in one round trip
    (`metering.usage.bucket_usage_many`) whatever their number: the same figures, exactly."""
    wanted = {a.team_id: _usage_ask(a.ledger, now, need_credit=a.need_credit,
                                    need_spend=a.need_spend) for a in asks}
    by_team = {a.team_id: a for a in asks}
    bounds: dict[str, list[datetime]] = {}
    for team_id, ask in wanted.items():
        if ask is None:
            continue
        schedule = by_team[team_id].schedule
        bounds[team_id] = (priced_bounds(ask.bounds, schedule) if ask.kind == "split"
                           else period_bounds(ask.bounds[0], ask.bounds[1], schedule))
    pieces = bucket_usage_many(session, bounds, now, _stale()) if bounds else {}
    out: dict[str, Standing] = {}
    for a in asks:
        ask = wanted[a.team_id]
        usage = (Decimal(0), Decimal(0)) if ask is None else _costs(
            ask, a.schedule, pieces.get(a.team_id, []))
        out[a.team_id] = _standing_from(
            a.team_id, now, a.credit_enforced, a.currency, a.ctx, a.schedule, a.ledger, ask,
            usage, need_credit=a.need_credit, need_burn=False)
    return out


def projected_exhaustion(remaining: Decimal, burn_per_hour: Decimal, now: datetime
                         ) -> datetime | None:
    if remaining <= 0:
        return now
    if burn_per_hour <= 0:
        return None
    seconds = mul(remaining, 3600) / burn_per_hour
    try:
        return now + timedelta(seconds=int(seconds) + 1)
    except OverflowError:
        return None
