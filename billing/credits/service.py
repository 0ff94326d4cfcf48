"""Credits and standing: grants, their burn-down, and a team's live money position.

Live credit used = what finalized invoices applied from the grants + the cost of all usage not
yet on a finalized invoice, whatever its month (running sandboxes up to now included; a draft
is not invoiced). Grants burn in the ledger's order: lower priority number first, then
soonest expiry, then oldest.
"""

from __future__ import annotations

import secrets
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
from metering.errors import BadRequest
from metering.plugins import Standing
from metering.usage import (
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


def ledger_from_rows(rows: list[list[Any]], *, credit: bool, burn: bool) -> Ledger:
    grants: list[repo.GrantBalance] = []
    unbilled = repo.Unbilled(None, ())
    if credit:
        grants = repo.balances_from_rows(rows[0])
        unbilled = repo.unbilled_from_rows(rows[1])
    running = running_allocations_from_rows(rows[-1]) if burn else []
    return Ledger(grants, unbilled, running)


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
    granted = used = month_spend = burn = zero
    this_month = month_start(now)
    if need_credit:
        grants = [g for g in ledger.grants if g.expires_at is None or g.expires_at > now]
        granted = add(*(g.amount for g in grants)) if grants else zero
        applied = add(*(g.applied for g in grants)) if grants else zero
        since = ledger.unbilled.since
        billed = add(*(UnitPrices(vp, gp).cost(v, m) for vp, gp, v, m in ledger.unbilled.billed))
        if since is not None and since < this_month:
            # One read for both figures: [since, month start) and [month start, now).
            before, month_spend = (b.cost for b in priced_usage(
                session, team_id, [since, this_month, now], now, _stale(), schedule))
            unbilled = add(before, month_spend, -billed)
        else:
            # Nothing open before this month: this month's usage (unless a close already
            # invoiced it early) less what live invoices billed of it.
            month_spend = usage_cost(session, team_id, this_month, now, now, schedule) \
                if since is not None or need_spend else zero
            unbilled = add(month_spend if since is not None else zero, -billed)
        used = add(applied, unbilled)
    elif need_spend:
        month_spend = usage_cost(session, team_id, this_month, now, now, schedule)
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
