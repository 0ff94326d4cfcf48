"""Enforcement: judge running executions against their team's limits and money, issue each
kill order once, announce credit and spend-limit thresholds, and serve the kill-order feed.

The decisions are the pure policy of `metering.core.limits`; the numbers (limits, live credit,
month-to-date spend) come from the installed `Billing`. A kill order and its outbox message are
written in one transaction, so the feed and the webhook always carry the same orders.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import groupby
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from metering import plugins
from metering.api.pagination import decode_cursor, encode_cursor
from metering.core.clock import format_period, rfc3339
from metering.core.limits import (
    KillReason,
    credit_threshold_crossed,
    kill_reasons,
)
from metering.core.money import fmt
from metering.enforcement import outbox
from metering.enforcement import repository as repo
from metering.enforcement.repository import KillOrderRow, NewKillOrder, RunningExecution
from metering.errors import BadRequest

log = logging.getLogger(__name__)

KILL_ORDER_TYPE = "kill_order"
CREDIT_THRESHOLD_TYPE = "credit.threshold"
SPEND_LIMIT_THRESHOLD_TYPE = "spend_limit.threshold"
CREDIT_THRESHOLDS = (50, 80, 100)
SPEND_LIMIT_THRESHOLDS = (80, 100)


@dataclass(frozen=True, slots=True)
class KillDecision:
    """A running execution that must stop, and the one reason it is told."""

    team_id: str
    sandbox_id: str
    execution_id: str
    reason: KillReason


@dataclass(slots=True)
class SweepResult:
    swept: bool  # False: another worker was sweeping; this one did nothing
    teams: int = 0
    executions: int = 0
    kill_orders: list[KillOrderRow] = field(default_factory=list)
    notifications: int = 0


@dataclass(frozen=True, slots=True)
class _TeamView:
    """The `TeamStanding` the policy judges: billing's standing, blocked also by the team row."""

    blocked: bool
    credit_remaining: Decimal | None
    month_spend: Decimal
    spend_limit: Decimal | None


@dataclass(frozen=True, slots=True)
class _Started:
    started_at: datetime


def new_kill_order_id() -> str:
    return "ko_" + secrets.token_hex(10)


def kill_order_body(order: KillOrderRow) -> dict[str, Any]:
    """The contract's kill order JSON (the feed's items and the webhook message's data)."""
    return {
        "id": order.id,
        "team_id": order.team_id,
        "sandbox_id": order.sandbox_id,
        "execution_id": order.execution_id,
        "action": order.action,
        "reason": order.reason,
        "issued_at": rfc3339(order.issued_at),
    }


def issue_kill_orders(
    session: Session, decisions: Sequence[KillDecision], now: datetime
) -> list[KillOrderRow]:
    """Issue a kill order for each decided execution that has none yet, and queue each new
    one on the outbox in the same transaction; answer the orders issued now."""
    issued = repo.insert_kill_orders(session, [
        NewKillOrder(new_kill_order_id(), d.team_id, d.sandbox_id, d.execution_id, d.reason, now)
        for d in decisions
    ])
    outbox.enqueue_messages(session, [
        outbox.NewMessage(KILL_ORDER_TYPE, order.team_id, kill_order_body(order),
                          f"kill:{order.execution_id}")
        for order in issued
    ], now)
    return issued


def threshold_messages(standing: plugins.Standing, now: datetime) -> list[outbox.NewMessage]:
    """The notifications a team's standing has earned: each credit threshold once per granted
    total (a new grant starts the count again), each spend-limit threshold once per month."""
    messages: list[outbox.NewMessage] = []
    team = standing.team_id
    granted = standing.credit_granted
    # Reached from zero = every threshold at or below the current use; the outbox key makes
    # each one happen once, however many sweeps see it.
    for pct in credit_threshold_crossed(granted, Decimal(0), standing.credit_used,
                                        CREDIT_THRESHOLDS):
        remaining = standing.credit_remaining
        if remaining is None:
            remaining = granted - standing.credit_used
        messages.append(outbox.NewMessage(
            CREDIT_THRESHOLD_TYPE, team, {
                "team_id": team, "threshold_pct": pct,
                "credit_granted": fmt(granted), "credit_used": fmt(standing.credit_used),
                "credit_remaining": fmt(remaining), "currency": standing.currency,
                "at": rfc3339(now),
            }, f"{CREDIT_THRESHOLD_TYPE}:{team}:{fmt(granted)}:{pct}"))
    limit = standing.spend_limit
    if limit is not None:
        period = format_period(now)
        for pct in credit_threshold_crossed(limit, Decimal(0), standing.month_spend,
                                            SPEND_LIMIT_THRESHOLDS):
            messages.append(outbox.NewMessage(
                SPEND_LIMIT_THRESHOLD_TYPE, team, {
                    "team_id": team, "threshold_pct": pct, "period": period,
                    "spend_limit": fmt(limit), "month_spend": fmt(standing.month_spend),
                    "currency": standing.currency, "at": rfc3339(now),
                }, f"{SPEND_LIMIT_THRESHOLD_TYPE}:{team}:{period}:{pct}"))
    return messages


def _judge_team(
    session: Session, team_id: str, executions: list[RunningExecution], now: datetime,
    messages: list[outbox.NewMessage],
) -> list[KillDecision]:
    if executions[0].team_blocked:
        # Blocked kills everything whatever the money says: no need to ask billing.
        return [KillDecision(team_id, e.sandbox_id, e.execution_id, "team_blocked")
                for e in executions]
    # `admission` computes only what a stop-or-go decision reads (credit where it is enforced,
    # spend under a limit): the same figures admissions refuse on, at the least cost.
    team_limits, standing = plugins.billing().admission(session, team_id, now)
    limits = team_limits.limits
    messages.extend(threshold_messages(standing, now))
    view = _TeamView(standing.blocked, standing.credit_remaining, standing.month_spend,
                     standing.spend_limit)
    decisions: list[KillDecision] = []
    for execution in executions:
        # An execution whose created event is still on its way has no known start: it can be
        # stopped for its team's sake but not for its own duration.
        started = execution.start_at or now
        reasons = kill_reasons(_Started(started), limits, view, now)
        if execution.start_at is None:
            reasons = [r for r in reasons if r != "max_duration"]
        if reasons:
            decisions.append(KillDecision(team_id, execution.sandbox_id,
                                          execution.execution_id, reasons[0]))
    return decisions


def sweep(session: Session, now: datetime, stale_after: timedelta) -> SweepResult:
    """Judge every running execution that has no kill order yet; issue the kill orders and
    threshold notifications due at `now`. One sweep at a time across all workers: a worker
    that finds another sweeping returns at once (`swept=False`)."""
    if not repo.try_lock_sweep(session):
        return SweepResult(swept=False)
    running = repo.running_without_kill_order(session, now, stale_after)
    result = SweepResult(swept=True, executions=len(running))
    decisions: list[KillDecision] = []
    messages: list[outbox.NewMessage] = []
    for team_id, group in groupby(running, key=lambda e: e.team_id):
        result.teams += 1
        executions = list(group)
        try:
            decisions.extend(_judge_team(session, team_id, executions, now, messages))
        except SQLAlchemyError:
            raise  # the transaction is lost; the next sweep starts over
        except Exception:
            # One team's broken data must not keep every other team's sandboxes running.
            log.exception("enforcement: judging a team failed", extra={"team_id": team_id})
    result.kill_orders = issue_kill_orders(session, decisions, now)
    if messages:
        known = outbox.existing_keys(session, [m.key for m in messages])
        fresh = [m for m in messages if m.key not in known]
        result.notifications = len(outbox.enqueue_messages(session, fresh, now))
    if result.kill_orders:
        reasons = Counter(order.reason for order in result.kill_orders)
        log.info("kill orders issued", extra={"kill_orders": len(result.kill_orders),
                                              "reasons": dict(reasons)})
    return result


# --------------------------------------------------------------------------- feed


def _cursor_seq(after: str | None) -> int:
    if after is None:
        return 0
    parts = decode_cursor(after)
    if len(parts) != 2 or parts[0] != "ko" or not isinstance(parts[1], int) or parts[1] < 0:
        raise BadRequest("after: not a cursor this service issued")
    return parts[1]


def actions_page(
    session: Session, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Kill orders after the cursor, oldest first, and the cursor after the last one returned.

    The cursor is null only on an empty page: a feed is tailed, so a consumer keeps the last
    cursor it got and asks again from there later.
    """
    rows = repo.kill_orders_after(session, _cursor_seq(after), limit)
    next_cursor = encode_cursor("ko", rows[-1].seq) if rows else None
    return [kill_order_body(r) for r in rows], next_cursor
