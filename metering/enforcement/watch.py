"""Which teams' money the sweep must look at now, so that a sweep every second stays cheap.

A team's standing (live credit, month-to-date spend) is the expensive part of a sweep: several
queries per team. But between two looks it only moves at the cost rate of the team's running
sandboxes, which is known from their allocations and the team's prices. So after each look
the watch works out how long the nearest money event (credit reaching a threshold or zero,
spend reaching a threshold or the limit) is at least away, and looks again after half of
that: looks get closer as the event nears, and the last one lands within a sweep of it.

When the running allocation changes (a sandbox starts, stops or is resized, so that the team's
total vCPU or memory moves) the plan is redone without a look, conservatively (see
`Watchlist.look_priority`), so teams that start sandboxes all the time cost no more than quiet
ones. Only the totals count: the cost rate is linear in them, so a change that keeps both
keeps the rate, and the plan made at that rate still holds. What the rate cannot predict
(late usage events, expiring grants, plan changes) is covered by looking at every team at
least every `max_recheck_s`. Each look also reads the team's limits and prices, so max
durations are judged on limits at most that old.

Every billing call of a sweep is a look, and looks stop at a time budget, most urgent first,
so a sweep stays short whatever the fleet or the database's load; what does not fit waits for
the next sweep. Looks are read in bulk (many teams in a few statements), in chunks sized by
what a look has cost so far (`Watchlist.looks_that_fit`).

Pure arithmetic plus an in-process table guarded by a lock; no database. Each worker keeps
its own table; a worker with an empty one simply looks at every team once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from metering.core.limits import PlanLimits
from metering.core.money import UnitPrices, div, mul
from metering.core.projection import cost_rate_per_second

_spread = random.Random()  # noqa: S311 - spreading load, not a secret



@dataclass(frozen=True, slots=True)
class Allocation:
    """What a team runs, as far as money goes: the cost rate
    (`metering.core.projection.cost_rate_per_second`) is linear in the total vCPU and the
    total memory, so two allocations with the same totals cost the same per second whichever
    sandboxes make them up. The sweep reads these totals per team in one statement."""

    vcpu: int
    memory_mib: int

    def rate(self, prices: UnitPrices) -> Decimal:
        return cost_rate_per_second([(self.vcpu, self.memory_mib)], prices)


@dataclass(frozen=True, slots=True)
class MoneyPosition:
    """The figures of a standing that money events are measured on."""

    credit_granted: Decimal
    credit_used: Decimal
    credit_remaining: Decimal | None
    month_spend: Decimal
    spend_limit: Decimal | None


def seconds_to_money_event(
    position: MoneyPosition, rate_per_second: Decimal,
    credit_thresholds: Sequence[int], spend_thresholds: Sequence[int],
) -> Decimal | None:
    """Seconds until the nearest money event at this cost rate: 0 if a stop is due now, None
    if nothing can happen at this rate (no credit or limit to reach, or nothing running).

    Thresholds already reached are not events any more (they are announced at this look).
    """
    if position.credit_remaining is not None and position.credit_remaining <= 0:
        return Decimal(0)
    if position.spend_limit is not None and position.month_spend >= position.spend_limit:
        return Decimal(0)
    gaps: list[Decimal] = []
    if position.credit_remaining is not None:
        gaps.append(position.credit_remaining)
    if position.credit_granted > 0:
        for pct in credit_thresholds:
            gap = div(mul(position.credit_granted, pct), 100) - position.credit_used
            if gap > 0:
                gaps.append(gap)
    if position.spend_limit is not None:
        for pct in (*spend_thresholds, 100):
            gap = div(mul(position.spend_limit, pct), 100) - position.month_spend
            if gap > 0:
                gaps.append(gap)
    if not gaps or rate_per_second <= 0:
        return None
    return min(gaps) / rate_per_second


def next_look(
    now: datetime, seconds_to_event: Decimal | None, max_recheck_s: float,  # float-ok: seconds
    rand: Callable[[], float] = _spread.random,
) -> datetime:
    """When to look again: after half the time to the event, at most `max_recheck_s` on.

    The longest wait is jittered down to between half and all of `max_recheck_s`, so teams
    first looked at in one sweep do not all come due in the same later sweep."""
    wait = float(max_recheck_s) * (0.5 + 0.5 * rand())  # float-ok: seconds
    if seconds_to_event is not None:
        wait = min(wait, float(seconds_to_event) / 2)  # float-ok: seconds
    return now + timedelta(seconds=max(wait, 0.0))


def allocation(rows: Iterable[tuple[str, int | None, int | None]]) -> Allocation:
    """A team's running allocation from its (execution_id, vcpu, memory_mib) rows (an
    unknown size counts as 0, as in the sweep's totals), comparable between sweeps."""
    vcpu = memory_mib = 0
    for _, cpus, mib in rows:
        vcpu += cpus or 0
        memory_mib += mib or 0
    return Allocation(vcpu, memory_mib)


NEVER_LOOKED = datetime.min.replace(tzinfo=UTC)
_HORIZON_S = Decimal(100 * 365 * 86_400)  # beyond this a predicted event is "never"


@dataclass(frozen=True, slots=True)
class TeamTerms:
    """A team's limits (as of its last look) and prices (fetched at `prices_at`)."""

    limits: PlanLimits
    prices: UnitPrices
    prices_at: datetime


@dataclass(frozen=True, slots=True)
class _Entry:
    terms: TeamTerms
    position: MoneyPosition  # as read at the look
    looked_at: datetime
    allocation: Allocation  # running at the look, or at the last re-plan
    rate_bound: Decimal  # the highest cost rate seen since the look, $ per second
    due_at: datetime
    event_at: datetime | None  # the money event predicted


def advance(position: MoneyPosition, spent: Decimal) -> MoneyPosition:
    """The position after `spent` more has been used (credit and month spend alike)."""
    remaining = position.credit_remaining
    return MoneyPosition(position.credit_granted, position.credit_used + spent,
                         None if remaining is None else remaining - spent,
                         position.month_spend + spent, position.spend_limit)


class Watchlist:
    """Per team: its terms as of its last look, and when its money must next be looked at."""

    def __init__(self, max_recheck_s: float = 10.0,  # float-ok: seconds
                 look_budget_s: float = 0.5, limits_budget_s: float = 0.25,  # float-ok: seconds
                 credit_thresholds: Sequence[int] = (50, 80, 100),
                 spend_thresholds: Sequence[int] = (80, 100),
                 max_looks_per_read: int = 250) -> None:
        self.max_recheck_s = max_recheck_s
        # Looks per sweep stop after this long (the most urgent first; at least one), so a
        # cold start with thousands of teams, or a slow database, never stretches a sweep.
        self.look_budget_s = look_budget_s
        # Past the look budget, teams never looked at still get their limits read (a tenth
        # of a look's cost) for this long more, so their durations are judged at once.
        self.limits_budget_s = limits_budget_s
        self.credit_thresholds = tuple(credit_thresholds)
        self.spend_thresholds = tuple(spend_thresholds)
        # Seconds one team's look costs inside a bulk read, as measured (a moving average
        # from a cautious start): sizes each chunk of looks to the budget left.
        self.look_cost_s = 0.002
        self.max_looks_per_read = max_looks_per_read
        self._entries: dict[str, _Entry] = {}
        self._limits: dict[str, PlanLimits] = {}  # teams never looked at, limits read alone
        self._lock = threading.Lock()

    def looks_that_fit(self, remaining_s: float) -> int:  # float-ok: seconds
        """How many teams to look at in the next bulk read with `remaining_s` of the look
        budget left: at least one (a sweep always makes progress), at most
        `max_looks_per_read`."""
        fit = int(max(remaining_s, 0.0) / self.look_cost_s)
        return max(1, min(self.max_looks_per_read, fit))

    def record_look_cost(self, teams: int, seconds: float) -> None:  # float-ok: seconds
        """A bulk read of `teams` looks took `seconds`."""
        if teams > 0:
            per_team = max(seconds / teams, 1e-5)
            with self._lock:
                self.look_cost_s = 0.5 * self.look_cost_s + 0.5 * per_team

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._limits.clear()

    def _get(self, team_id: str) -> _Entry | None:
        with self._lock:
            return self._entries.get(team_id)

    def limits(self, team_id: str) -> PlanLimits | None:
        """The limits of the team's last look (or read alone before its first); None if
        never read."""
        with self._lock:
            entry = self._entries.get(team_id)
            return entry.terms.limits if entry is not None else self._limits.get(team_id)

    def remember_limits(self, team_id: str, limits: PlanLimits) -> None:
        """Limits read alone for a team not looked at yet (its first look replaces them)."""
        with self._lock:
            self._limits[team_id] = limits

    def _plan(self, now: datetime, position: MoneyPosition, rate: Decimal, looked_at: datetime
              ) -> tuple[datetime, datetime | None]:
        seconds = seconds_to_money_event(position, rate, self.credit_thresholds,
                                         self.spend_thresholds)
        due_at = min(next_look(now, seconds, self.max_recheck_s),
                     looked_at + timedelta(seconds=self.max_recheck_s))
        event_at = None
        if seconds is not None and seconds < _HORIZON_S:
            event_at = now + timedelta(seconds=float(seconds))  # float-ok: seconds
        return due_at, event_at

    def look_priority(
        self, team_id: str, now: datetime, current: Allocation, oldest_start: datetime | None,
    ) -> tuple[int, datetime] | None:
        """None when the team needs no look now; else a sort key, most urgent first: teams
        whose predicted money event is near (earliest event first: they are few, and known
        to matter); then teams never looked at (oldest running execution first: their
        durations cannot be judged before their limits are known); then looks due only
        because `max_recheck_s` passed.

        A changed running allocation re-plans without a look: what was spent since the look
        is bounded by the highest rate seen since times the time elapsed, and the event is
        predicted from there at that rate (early, never late)."""
        entry = self._get(team_id)
        if entry is None:
            return (1, oldest_start or now)
        if entry.allocation != current:
            rate = max(entry.rate_bound, current.rate(entry.terms.prices))
            elapsed = Decimal((now - entry.looked_at) / timedelta(microseconds=1)) / 1_000_000
            spent = rate * max(elapsed, Decimal(0))
            due_at, event_at = self._plan(now, advance(entry.position, spent), rate,
                                          entry.looked_at)
            entry = _Entry(entry.terms, entry.position, entry.looked_at, current, rate, due_at,
                           event_at)
            with self._lock:
                self._entries[team_id] = entry
        if now < entry.due_at:
            return None
        if entry.event_at is None:
            return (2, entry.due_at)
        return (0, entry.event_at)

    def remember_look(
        self, team_id: str, now: datetime, terms: TeamTerms, position: MoneyPosition,
        current: Allocation,
    ) -> None:
        """Record a look at `now`: the terms and money read, and when to look next."""
        rate = current.rate(terms.prices)
        due_at, event_at = self._plan(now, position, rate, now)
        with self._lock:
            self._entries[team_id] = _Entry(terms, position, now, current, rate, due_at,
                                            event_at)
            self._limits.pop(team_id, None)

    def forget(self, team_ids: Iterable[str]) -> None:
        """Drop what was learnt about these teams: each is looked at again at once."""
        with self._lock:
            for team_id in team_ids:
                self._entries.pop(team_id, None)
                self._limits.pop(team_id, None)

    def forget_except(self, team_ids: Iterable[str]) -> None:
        """Drop teams with nothing running any more (keeps the table the size of the fleet)."""
        keep = set(team_ids)
        with self._lock:
            for table in (self._entries, self._limits):
                for team_id in [t for t in table if t not in keep]:
                    del table[team_id]
