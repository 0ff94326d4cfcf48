"""Kill orders: why a running execution must be stopped now. Pure; no clock, no I/O.

Most fundamental first: `team_blocked`, `credit_exhausted`, `spend_limit_reached` (the same
predicates as admission, so a team that may not start a sandbox also may not keep one running),
then `max_duration` (elapsed since the execution's start >= the plan's `max_execution_s`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, Protocol, get_args

from metering.core.admission import TeamStanding, credit_exhausted, spend_limit_reached
from metering.core.limits import PlanLimits, require_aware

__all__ = [
    "KILL_REASONS",
    "KillReason",
    "StartedExecution",
    "kill_reasons",
    "max_duration_deadline",
    "max_duration_reached",
]

KillReason = Literal["team_blocked", "credit_exhausted", "spend_limit_reached", "max_duration"]
KILL_REASONS: tuple[KillReason, ...] = get_args(KillReason)


class StartedExecution(Protocol):
    """Anything with the start time of a running execution (created or resumed `time`)."""

    @property
    def started_at(self) -> datetime: ...


def max_duration_deadline(started_at: datetime, limits: PlanLimits) -> datetime:
    """The instant an execution started at `started_at` has used its plan's max duration."""
    return started_at + timedelta(seconds=limits.max_execution_s)


def max_duration_reached(started_at: datetime, limits: PlanLimits, now: datetime) -> bool:
    """Whether the execution has run for its full `max_execution_s` (reaching it is enough)."""
    require_aware("started_at", started_at)
    require_aware("now", now)
    return now >= max_duration_deadline(started_at, limits)


def kill_reasons(
    execution: StartedExecution,
    limits: PlanLimits,
    team: TeamStanding,
    now: datetime,
) -> list[KillReason]:
    """Why a running execution must be killed now, most fundamental first; empty = let it run.

    A kill order carries one reason: take the first. `limits` are the team's effective limits at
    `now`; `team` is its live standing (an `AdmissionState` will do).
    """
    reasons: list[KillReason] = []
    if team.blocked:
        reasons.append("team_blocked")
    if credit_exhausted(team.credit_remaining):
        reasons.append("credit_exhausted")
    if spend_limit_reached(team.month_spend, team.spend_limit):
        reasons.append("spend_limit_reached")
    if max_duration_reached(execution.started_at, limits, now):
        reasons.append("max_duration")
    return reasons
