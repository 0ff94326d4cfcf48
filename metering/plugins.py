"""What metering needs from the billing side, as one protocol billing installs at start-up.

Metering never imports billing. Prices, plan limits, a team's financial standing (credit left,
spend this month) and what a new team starts on are billing's data; metering asks for them
through `Billing`, installed once with `install(...)`. Metering refuses to run without one
(`BillingNotInstalled`) rather than price and limit on silent defaults. `DefaultBilling`
(configured prices, the default plan's limits, no credit) is there to be installed on purpose,
e.g. by tests of metering alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from psycopg.rows import TupleRow
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from metering.config import get_settings
from metering.core.limits import DEFAULT_PLAN_LIMITS, PlanLimits
from metering.core.money import UnitPrices
from metering.core.pricing import PriceSchedule, constant


@dataclass(frozen=True, slots=True)
class TeamLimits:
    """The limits in force for a team at an instant."""

    plan_code: str
    limits: PlanLimits
    credit_enforced: bool  # running out of prepaid credit stops the team (Hobby)


@dataclass(frozen=True, slots=True)
class Standing:
    """A team's money position right now, running sandboxes included."""

    team_id: str
    blocked: bool
    blocked_reason: str | None
    credit_granted: Decimal
    credit_used: Decimal
    credit_remaining: Decimal | None  # None: credit does not stop this team
    month_spend: Decimal
    spend_limit: Decimal | None
    burn_rate_per_hour: Decimal  # cost per hour of what runs now
    currency: str = "usd"


class TeamRead:
    """Billing's reading of a team, made by its `Prefetch` from the row its statement answered.

    Metering never looks inside: it carries the read back to `Billing.admission` (or
    `admission_from_read`), where billing's own subclass is what it gets."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Prefetch:
    """One statement the billing side wants sent with an admission's own reads, in the same
    round trip (driver paramstyle: `%(name)s`), and billing's reading of its first row."""

    sql: str
    params: Mapping[str, object]
    read: Callable[[TupleRow], TeamRead]


class Billing(Protocol):
    def price_schedule(
        self, session: Session, team_id: str, start: datetime, end: datetime
    ) -> PriceSchedule: ...

    def limits(self, session: Session, team_id: str, at: datetime) -> TeamLimits: ...

    def standing(self, session: Session, team_id: str, now: datetime) -> Standing: ...

    def admission_prefetch(self, team_id: str) -> Prefetch | None:
        """The read of the team that `admission` can start from, if any."""
        ...

    def admission_from_read(
        self, team_id: str, now: datetime, prefetched: TeamRead | None
    ) -> tuple[TeamLimits, Standing] | None:
        """`admission` from the prefetched read alone, without any I/O, where that is enough
        (no credit or spend to add up); None where it needs the database."""
        ...

    def admission(
        self, session: Session, team_id: str, now: datetime, prefetched: TeamRead | None = None
    ) -> tuple[TeamLimits, Standing]:
        """Limits and standing for an admission decision, computing only what the decision
        needs (credit only where it is enforced, spend only under a limit). `prefetched` is
        the read of `admission_prefetch`'s statement when the caller ran it."""
        ...

    def admission_many(
        self, session: Session, team_ids: Sequence[str], now: datetime
    ) -> Mapping[str, tuple[TeamLimits, Standing, PriceSchedule]]:
        """`admission` for many teams at once, in a few statements whatever their number (the
        enforcement sweep's looks), with the same figures, and each team's price schedule
        (prices in force at `now` and after). A team whose figures cannot be made (broken
        plan data) is left out: the caller asks `admission` for it alone, to learn why."""
        ...

    def teams_created(self, session: Session, team_ids: Sequence[str], at: datetime) -> None:
        """Teams first seen (in events or admissions) at `at`, in the transaction that created
        them: billing puts them on the default plan and grants its credit."""
        ...


class DefaultBilling:
    """Configured prices and the default plan's limits; no credit, no spend limit."""

    def price_schedule(
        self, session: Session, team_id: str, start: datetime, end: datetime
    ) -> PriceSchedule:
        settings = get_settings()
        return constant(UnitPrices(settings.price_vcpu_second, settings.price_gib_second,
                                   settings.currency))

    def limits(self, session: Session, team_id: str, at: datetime) -> TeamLimits:
        plan = get_settings().default_plan
        return TeamLimits(plan, DEFAULT_PLAN_LIMITS[plan], credit_enforced=False)

    def standing(self, session: Session, team_id: str, now: datetime) -> Standing:
        zero = Decimal(0)
        return Standing(team_id, False, None, zero, zero, None, zero, None, zero)

    def admission_prefetch(self, team_id: str) -> Prefetch | None:
        return None

    def admission_from_read(
        self, team_id: str, now: datetime, prefetched: TeamRead | None
    ) -> tuple[TeamLimits, Standing] | None:
        return None  # the threaded path; subclasses in tests override `admission`

    def admission(
        self, session: Session, team_id: str, now: datetime, prefetched: TeamRead | None = None
    ) -> tuple[TeamLimits, Standing]:
        return self.limits(session, team_id, now), self.standing(session, team_id, now)

    def admission_many(
        self, session: Session, team_ids: Sequence[str], now: datetime
    ) -> Mapping[str, tuple[TeamLimits, Standing, PriceSchedule]]:
        answers: dict[str, tuple[TeamLimits, Standing, PriceSchedule]] = {}
        for team_id in team_ids:
            try:
                limits, standing = self.admission(session, team_id, now)
                schedule = self.price_schedule(session, team_id, now, now + timedelta(hours=1))
            except SQLAlchemyError:
                raise  # the transaction is lost
            except Exception:  # noqa: S112 - left out: the caller asks for it alone
                continue
            answers[team_id] = (limits, standing, schedule)
        return answers

    def teams_created(self, session: Session, team_ids: Sequence[str], at: datetime) -> None:
        return None


class BillingNotInstalled(RuntimeError):
    """Metering was asked for prices, limits or standing before any `Billing` was installed."""


_billing: Billing | None = None


def install(billing: Billing) -> None:
    """Plug billing into metering; every process does this once at start-up."""
    global _billing  # noqa: PLW0603 - one implementation per process, set at wiring time
    _billing = billing


def billing() -> Billing:
    if _billing is None:
        raise BillingNotInstalled(
            "no billing installed: call metering.plugins.install(...) at start-up "
            "(billing.app.wire_billing does)")
    return _billing
