"""Enforcement: judge running executions against their team's limits and money, issue each
kill order once, announce credit and spend-limit thresholds, and serve the kill-order feed.

The decisions are the pure policy of `metering.core.limits`; the numbers (limits, live credit,
month-to-date spend) come from the installed `Billing`. A kill order and its outbox message are
written in one transaction, so the feed and the webhook always carry the same orders.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
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
from metering.core.kills import KillReason, kill_reasons
from metering.core.limits import PlanLimits
from metering.core.money import fmt
from metering.core.notifications import credit_threshold_crossed
from metering.enforcement import outbox
from metering.enforcement import repository as repo
from metering.enforcement.repository import KillOrderRow, NewKillOrder, RunningExecution
from metering.enforcement.schemas import KillOrderOut, KillOrderPage
from metering.enforcement.watch import (
    Allocation,
    MoneyPosition,
    TeamTerms,
    Watchlist,
    allocation,
)
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
    looks: int = 0  # teams whose limits and money were read from billing


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


_QUIET = _TeamView(blocked=False, credit_remaining=None, month_spend=Decimal(0),
                   spend_limit=None)


def _look(
    session: Session, team_id: str, now: datetime, watch: Watchlist, running: Allocation,
    messages: list[outbox.NewMessage],
) -> tuple[PlanLimits, _TeamView]:
    """Read the team's limits and money, queue the thresholds it reached, and let the watch
    plan the next look from how far the nearest money event is at the running cost rate."""
    billing = plugins.billing()
    # `admission` computes only what a stop-or-go decision reads (credit where it is
    # enforced, spend under a limit): the figures admissions refuse on, at the least cost.
    team_limits, standing = billing.admission(session, team_id, now)
    known = watch.prices(team_id, now)
    if known is not None:
        terms = TeamTerms(team_limits.limits, known.prices, known.prices_at)
    else:
        schedule = billing.price_schedule(session, team_id, now, now + timedelta(hours=1))
        terms = TeamTerms(team_limits.limits, schedule.at(now).prices, now)
    messages.extend(threshold_messages(standing, now))
    watch.remember_look(team_id, now, terms, MoneyPosition(
        standing.credit_granted, standing.credit_used, standing.credit_remaining,
        standing.month_spend, standing.spend_limit), running)
    view = _TeamView(standing.blocked, standing.credit_remaining, standing.month_spend,
                     standing.spend_limit)
    return terms.limits, view


def _judge_team(
    session: Session, team_id: str, executions: list[RunningExecution], running: Allocation,
    now: datetime, watch: Watchlist, look: bool, read_limits: bool,
    messages: list[outbox.NewMessage],
) -> list[KillDecision]:
    """Kill decisions for one team's running executions (oldest first, unknown starts last).

    `look`: read its limits and money from billing now; else judge its durations on the
    limits already known, reading them alone first if unknown and `read_limits` allows."""
    if look:
        limits, view = _look(session, team_id, now, watch, running, messages)
    else:
        view = _QUIET
        known = watch.limits(team_id)
        if known is None and read_limits:
            known = plugins.billing().limits(session, team_id, now).limits
            watch.remember_limits(team_id, known)
        if known is None:
            return []  # nothing known yet (over this sweep's budget): judged next sweep
        limits = known
    decisions: list[KillDecision] = []
    reasons: list[KillReason]
    for execution in executions:
        if execution.start_at is None:
            # Its created event is still on its way: it can be stopped for its team's sake
            # but not for its own duration.
            reasons = [r for r in kill_reasons(_Started(now), limits, view, now)
                       if r != "max_duration"]
        else:
            reasons = kill_reasons(_Started(execution.start_at), limits, view, now)
        if reasons:
            decisions.append(KillDecision(team_id, execution.sandbox_id,
                                          execution.execution_id, reasons[0]))
        elif view is _QUIET:
            break  # no team-wide reason, and every later execution started later still
    return decisions


# One per process: what this worker's sweeps learnt about each team (see `watch.py`).
# Budgets well inside the 1-second cadence, counted from the sweep's start: reading 20,000
# running sandboxes on a busy database takes a few hundred milliseconds of it.
WATCH = Watchlist(credit_thresholds=CREDIT_THRESHOLDS, spend_thresholds=SPEND_LIMIT_THRESHOLDS,
                  look_budget_s=0.35, limits_budget_s=0.15)


_TeamToJudge = tuple[str, list[RunningExecution], Allocation, tuple[int, datetime] | None]


def _blocked_or_to_judge(
    running: list[RunningExecution], now: datetime, watch: Watchlist, result: SweepResult,
    decisions: list[KillDecision],
) -> list[_TeamToJudge]:
    """Blocked teams' executions straight to kill decisions; the other teams with their
    allocation now and how urgently their money needs a look, most urgent first."""
    teams: list[_TeamToJudge] = []
    for team_id, group in groupby(running, key=lambda e: e.team_id):
        executions = list(group)
        result.teams += 1
        if executions[0].team_blocked:
            # Blocked kills everything whatever the money says: no need to ask billing.
            decisions.extend(KillDecision(team_id, e.sandbox_id, e.execution_id, "team_blocked")
                             for e in executions)
            continue
        current = allocation((e.execution_id, e.vcpu, e.memory_mib) for e in executions)
        oldest = executions[0].start_at  # the query orders each team's oldest first
        teams.append((team_id, executions, current,
                      watch.look_priority(team_id, now, current, oldest)))
    # The most urgent looks first, while the budget lasts; the rest wait for the next sweep
    # (teams looked at before still have their durations judged now, on their last limits).
    teams.sort(key=lambda t: (t[3] is None, t[3] or (0, now), t[0]))
    return teams


def _judge_teams(
    session: Session, teams: list[_TeamToJudge], now: datetime, watch: Watchlist,
    on_look: Callable[[str], None] | None, decisions: list[KillDecision],
    messages: list[outbox.NewMessage], started: float,  # float-ok: monotonic seconds
) -> int:
    """Judge each team within the sweep's time budgets (counted from `started`); answers how
    many were looked at."""
    looks_end = started + watch.look_budget_s
    limits_end = looks_end + watch.limits_budget_s
    looked = 0
    for team_id, executions, current, priority in teams:
        look = priority is not None and (looked == 0 or time.monotonic() < looks_end)
        if look:
            looked += 1
            if on_look is not None:
                on_look(team_id)
        try:
            decisions.extend(_judge_team(session, team_id, executions, current, now, watch,
                                         look, time.monotonic() < limits_end, messages))
        except SQLAlchemyError:
            raise  # the transaction is lost; the next sweep starts over
        except Exception:
            # One team's broken data must not keep every other team's sandboxes running.
            log.exception("enforcement: judging a team failed", extra={"team_id": team_id})
    return looked


def _issue(session: Session, decisions: list[KillDecision], messages: list[outbox.NewMessage],
           now: datetime, result: SweepResult) -> None:
    """The kill orders decided and the notifications not already queued."""
    result.kill_orders = issue_kill_orders(session, decisions, now)
    if messages:
        known = outbox.existing_keys(session, [m.key for m in messages])
        fresh = [m for m in messages if m.key not in known]
        result.notifications = len(outbox.enqueue_messages(session, fresh, now))
    if result.kill_orders:
        reasons = Counter(order.reason for order in result.kill_orders)
        log.info("kill orders issued", extra={"kill_orders": len(result.kill_orders),
                                              "reasons": dict(reasons)})


def sweep(
    session: Session, now: datetime, stale_after: timedelta, watch: Watchlist | None = None,
    on_look: Callable[[str], None] | None = None,
) -> SweepResult:
    """Judge every running execution that has no kill order yet; issue the kill orders and
    threshold notifications due at `now`. One sweep at a time across all workers: a worker
    that finds another sweeping returns at once (`swept=False`).

    Max duration and blocks are judged on every sweep; a team's money (and its limits) are
    read when `watch` says they may have moved far enough to matter (see `watch.py`);
    `on_look` is told each team read, for the caller to forget if the transaction fails.
    """
    watch = WATCH if watch is None else watch
    # The budgets count from here, the read of the fleet included: on a busy database the
    # sweep still ends within its 1-second cadence (what is not judged now waits a sweep).
    started = time.monotonic()
    if not repo.try_lock_sweep(session):
        return SweepResult(swept=False)
    running = repo.running_without_kill_order(session, now, stale_after)
    result = SweepResult(swept=True, executions=len(running))
    decisions: list[KillDecision] = []
    messages: list[outbox.NewMessage] = []
    teams = _blocked_or_to_judge(running, now, watch, result, decisions)
    result.looks = _judge_teams(session, teams, now, watch, on_look, decisions, messages,
                                started)
    watch.forget_except(t[0] for t in teams)
    _issue(session, decisions, messages, now, result)
    return result


# --------------------------------------------------------------------------- feed


def _cursor_seq(after: str | None) -> int:
    if after is None:
        return 0
    parts = decode_cursor(after)
    if len(parts) != 2 or parts[0] != "ko" or not isinstance(parts[1], int) or parts[1] < 0:
        raise BadRequest("after: not a cursor this service issued")
    return parts[1]


def actions_page(session: Session, after: str | None, limit: int) -> KillOrderPage:
    """Kill orders after the cursor, oldest first, and the cursor after the last one returned.

    The cursor is null only on an empty page: a feed is tailed, so a consumer keeps the last
    cursor it got and asks again from there later.
    """
    rows = repo.kill_orders_after(session, _cursor_seq(after), limit)
    next_cursor = encode_cursor("ko", rows[-1].seq) if rows else None
    return KillOrderPage(data=[KillOrderOut.model_validate(kill_order_body(r)) for r in rows],
                         next_cursor=next_cursor)
