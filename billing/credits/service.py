"""Credits and standing: grants, their burn-down, and a team's live money position.

Live credit used = what finalized invoices applied from the grants + the cost of usage not
yet invoiced (running sandboxes up to now included). Grants burn in the ledger's order:
lower priority number first, then soonest expiry, then oldest.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.credits import repository as repo
from metering.config import get_settings
from metering.core.clock import EPOCH, month_start, next_month_start, parse_period
from metering.core.money import add, mul
from metering.errors import BadRequest
from metering.executions.service import usage_by_price_period
from metering.plugins import Standing


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


def usage_cost(session: Session, team_id: str, start: datetime, end: datetime,
               now: datetime) -> Decimal:
    """Exact (unrounded) cost of the team's usage in [start, end)."""
    if end <= start:
        return Decimal(0)
    stale = timedelta(seconds=get_settings().stale_after_s)
    total = Decimal(0)
    for priced in usage_by_price_period(session, team_id, start, end, now, stale):
        total = add(total, priced.period.prices.cost(priced.vcpu_ms, priced.mib_ms))
    return total


_RUNNING_ALLOCATION = text("""
SELECT e.vcpu AS vcpu, e.memory_mib AS memory_mib, s.vcpu AS seg_vcpu, s.memory_mib AS seg_mem
FROM executions e
JOIN execution_segments s ON s.execution_id = e.execution_id AND s.end_at IS NULL
WHERE e.team_id = :team_id AND e.end_at IS NULL AND e.inferred_end_at IS NULL
  AND e.last_event_at > CAST(:now AS timestamptz) - CAST(:stale AS interval)
""")


def standing(session: Session, team_id: str, now: datetime, credit_enforced: bool,
             currency: str = "usd") -> Standing:
    row = session.execute(text(
        "SELECT blocked_at, blocked_reason, spend_limit FROM teams WHERE id = :t"),
        {"t": team_id}).first()
    blocked = row is not None and row[0] is not None
    grants = [g for g in repo.balances(session, team_id)
              if g.expires_at is None or g.expires_at > now]
    granted = add(*(g.amount for g in grants)) if grants else Decimal(0)
    applied = add(*(g.applied for g in grants)) if grants else Decimal(0)
    last = repo.last_invoiced_period(session, team_id)
    unbilled_from = next_month_start(parse_period(last)[0]) if last else EPOCH
    this_month = month_start(now)
    month_spend = usage_cost(session, team_id, this_month, now, now)
    if unbilled_from <= this_month:
        unbilled = add(month_spend, usage_cost(session, team_id, unbilled_from, this_month, now))
    else:  # the current month already invoiced (a close run early by hand)
        unbilled = usage_cost(session, team_id, unbilled_from, now, now)
    used = add(applied, unbilled)
    remaining = granted - used
    stale = timedelta(seconds=get_settings().stale_after_s)
    burn = Decimal(0)
    if granted or credit_enforced or (row is not None and row[2] is not None):
        from metering.executions.pricing import schedule_for

        prices = schedule_for(session, team_id, now, now + timedelta(seconds=1)).at(now).prices
        for r in session.execute(_RUNNING_ALLOCATION, {"team_id": team_id, "now": now,
                                                       "stale": stale}):
            burn = add(burn, prices.cost(r.seg_vcpu * 3_600_000, r.seg_mem * 3_600_000))
    return Standing(
        team_id=team_id, blocked=blocked, blocked_reason=row[1] if row else None,
        credit_granted=granted, credit_used=used,
        credit_remaining=remaining if credit_enforced else None,
        month_spend=month_spend, spend_limit=row[2] if row else None,
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
