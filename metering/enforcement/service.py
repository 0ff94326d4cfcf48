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
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from metering import plugins
from metering.api.pagination import decode_cursor, encode_cursor
from metering.core.clock import format_period, rfc3339
from metering.core.kills import KillReason, kill_reasons, max_duration_reached
from metering.core.limits import PlanLimits
from metering.core.money import fmt
from metering.core.notifications import credit_threshold_crossed
from metering.core.pricing import PriceSchedule
from metering.enforcement import outbox
from metering.enforcement import repository as repo
from metering.enforcement.repository import KillOrderRow, NewKillOrder, RunningExecution
from metering.enforcement.schemas import KillOrderOut, KillOrderPage
from metering.enforcement.watch import (
    Allocation,
    MoneyPosition,
    TeamTerms,
    Watchlist,
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


@dataclass(slots=True)
class _Team:
    """A team in a sweep: its running totals, how urgently its money needs a look (None: not
    now), and what this sweep learnt of it."""

    running: repo.RunningTeam
    allocation: Allocation
    priority: tuple[int, datetime] | None
    limits: PlanLimits | None = None
    view: _TeamView = _QUIET
    failed: bool = False  # its billing data could not be read: not judged this sweep

    @property
    def team_id(self) -> str:
        return self.running.team_id


def _remember_look(
    team: _Team, now: datetime, watch: Watchlist, limits: plugins.TeamLimits,
    standing: plugins.Standing, schedule: PriceSchedule, messages: list[outbox.NewMessage],
) -> None:
    """A look's figures: queue the thresholds the team reached, and let the watch plan the
    next look from how far the nearest money event is at the running cost rate."""
    terms = TeamTerms(limits.limits, schedule.at(now).prices, now)
    messages.extend(threshold_messages(standing, now))
    watch.remember_look(team.team_id, now, terms, MoneyPosition(
        standing.credit_granted, standing.credit_used, standing.credit_remaining,
        standing.month_spend, standing.spend_limit), team.allocation)
    team.limits = terms.limits
    team.view = _TeamView(standing.blocked, standing.credit_remaining, standing.month_spend,
                          standing.spend_limit)


def _look_alone(session: Session, team: _Team, now: datetime
                ) -> tuple[plugins.TeamLimits, plugins.Standing, PriceSchedule]:
    billing = plugins.billing()
    limits, standing = billing.admission(session, team.team_id, now)
    return limits, standing, billing.price_schedule(session, team.team_id, now,
                                                    now + timedelta(hours=1))


def _look_at(
    session: Session, teams: list[_Team], now: datetime, watch: Watchlist,
    on_look: Callable[[str], None] | None, messages: list[outbox.NewMessage],
    started: float,  # float-ok: monotonic seconds
) -> int:
    """Read the limits and money of the teams whose look is due, most urgent first, many at
    once (`Billing.admission_many`), in chunks sized to the look budget left (counted from
    `started`; the first chunk whatever the budget). Answers how many were looked at.

    `admission` computes only what a stop-or-go decision reads (credit where it is enforced,
    spend under a limit): the figures admissions refuse on, at the least cost."""
    billing = plugins.billing()
    due = [t for t in teams if t.priority is not None]
    looks_end = started + watch.look_budget_s
    looked = 0
    while looked < len(due):
        left = looks_end - time.monotonic()
        if looked and left <= 0:
            break
        chunk = due[looked:looked + watch.looks_that_fit(left)]
        looked += len(chunk)
        if on_look is not None:
            for team in chunk:
                on_look(team.team_id)
        began = time.monotonic()
        try:
            answers = billing.admission_many(session, [t.team_id for t in chunk], now)
        except SQLAlchemyError:
            raise  # the transaction is lost; the next sweep starts over
        except Exception:
            log.exception("enforcement: a bulk look failed; looking at each team alone")
            answers = {}
        watch.record_look_cost(len(answers), time.monotonic() - began)
        for team in chunk:
            try:
                answer = answers.get(team.team_id) or _look_alone(session, team, now)
                _remember_look(team, now, watch, *answer, messages)
            except SQLAlchemyError:
                raise
            except Exception:
                _judging_failed(team)
    return looked


def _judging_failed(team: _Team) -> None:
    """Set aside a team whose data broke its judgement (logged, inside an `except`): one
    team's broken data must not keep every other team's sandboxes running."""
    team.failed = True
    log.exception("enforcement: judging a team failed", extra={"team_id": team.team_id})


def _read_missing_limits(
    session: Session, teams: list[_Team], now: datetime, watch: Watchlist,
    started: float,  # float-ok: monotonic seconds
) -> None:
    """Teams never looked at (past the look budget) get their limits read alone, a tenth of
    a look's cost, while the limits budget lasts, so their durations are judged at once;
    the others' wait for the next sweep. Limits already known are taken from the watch."""
    limits_end = started + watch.look_budget_s + watch.limits_budget_s
    for team in teams:
        if team.limits is not None or team.failed:
            continue
        team.limits = watch.limits(team.team_id)
        if team.limits is None and time.monotonic() < limits_end:
            try:
                team.limits = plugins.billing().limits(session, team.team_id, now).limits
            except SQLAlchemyError:
                raise
            except Exception:
                _judging_failed(team)
                continue
            watch.remember_limits(team.team_id, team.limits)


def _team_reasons(limits: PlanLimits, view: _TeamView, now: datetime) -> list[KillReason]:
    """The reasons that stop every running execution of the team (its own duration aside)."""
    return [r for r in kill_reasons(_Started(now), limits, view, now) if r != "max_duration"]


def _kills_due(
    teams: list[_Team], now: datetime, every: dict[str, _Team], cutoffs: dict[str, datetime],
) -> None:
    """Which teams have kills due, from their totals alone: a team-wide reason (all their
    executions), or an oldest start past the max duration (those started by the cutoff).
    A team whose limits are still unknown is judged once they are known."""
    for team in teams:
        limits = team.limits
        if team.failed or limits is None:
            continue
        if _team_reasons(limits, team.view, now):
            every[team.team_id] = team
        elif (team.running.oldest_start is not None
              and max_duration_reached(team.running.oldest_start, limits, now)):
            cutoffs[team.team_id] = now - timedelta(seconds=limits.max_execution_s)


def _decide(executions: list[RunningExecution], judged: dict[str, _Team], now: datetime
            ) -> list[KillDecision]:
    """Kill decisions for the executions fetched, each on its team's limits and money."""
    decisions: list[KillDecision] = []
    reasons: list[KillReason]
    for execution in executions:
        team = judged[execution.team_id]
        limits = team.limits
        if team.running.blocked or limits is None:  # blocked kills everything, first
            reasons = ["team_blocked"]
        elif execution.start_at is None:
            # Its created event is still on its way: it can be stopped for its team's sake
            # but not for its own duration.
            reasons = _team_reasons(limits, team.view, now)
        else:
            reasons = kill_reasons(_Started(execution.start_at), limits, team.view, now)
        if reasons:
            decisions.append(KillDecision(execution.team_id, execution.sandbox_id,
                                          execution.execution_id, reasons[0]))
    return decisions


# One per process: what this worker's sweeps learnt about each team (see `watch.py`).
# Budgets well inside the 1-second cadence, counted from the sweep's start: reading the fleet
# on a busy database takes part of it.
WATCH = Watchlist(credit_thresholds=CREDIT_THRESHOLDS, spend_thresholds=SPEND_LIMIT_THRESHOLDS,
                  look_budget_s=0.35, limits_budget_s=0.15)


def _to_judge(fleet: list[repo.RunningTeam], now: datetime, watch: Watchlist,
              every: dict[str, _Team]) -> list[_Team]:
    """Blocked teams straight to `every` (kill everything whatever the money says: no need
    to ask billing); the other teams with their allocation now and how urgently their money
    needs a look, most urgent first."""
    teams: list[_Team] = []
    for running in fleet:
        current = Allocation(running.vcpu, running.memory_mib)
        if running.blocked:
            every[running.team_id] = _Team(running, current, None)
            continue
        teams.append(_Team(running, current, watch.look_priority(
            running.team_id, now, current, running.oldest_start)))
    # The most urgent looks first, while the budget lasts; the rest wait for the next sweep
    # (teams looked at before still have their durations judged now, on their last limits).
    teams.sort(key=lambda t: (t.priority is None, t.priority or (0, now), t.team_id))
    return teams


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

    The fleet is read as one row per team (count, vCPU and memory totals, oldest start,
    blocked); executions are fetched only for the teams with a kill due: blocked, out of
    money, or with an oldest start past the max duration (then only those past it). Max
    duration and blocks are judged on every sweep; a team's money (and its limits) are read
    when `watch` says they may have moved far enough to matter (see `watch.py`), many teams
    in one bulk read; `on_look` is told each team read, for the caller to forget if the
    transaction fails.
    """
    watch = WATCH if watch is None else watch
    # The budgets count from here, the read of the fleet included: on a busy database the
    # sweep still ends within its 1-second cadence (what is not judged now waits a sweep).
    started = time.monotonic()
    if not repo.try_lock_sweep(session):
        return SweepResult(swept=False)
    fleet = repo.running_teams(session, now, stale_after)
    result = SweepResult(swept=True, teams=len(fleet),
                         executions=sum(t.executions for t in fleet))
    every: dict[str, _Team] = {}
    cutoffs: dict[str, datetime] = {}
    messages: list[outbox.NewMessage] = []
    teams = _to_judge(fleet, now, watch, every)
    result.looks = _look_at(session, teams, now, watch, on_look, messages, started)
    _read_missing_limits(session, teams, now, watch, started)
    _kills_due(teams, now, every, cutoffs)
    executions = repo.due_executions(session, now, stale_after, list(every), cutoffs)
    judged = {**every, **{t.team_id: t for t in teams if t.team_id in cutoffs}}
    decisions = _decide(executions, judged, now)
    watch.forget_except(t.team_id for t in teams)
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
