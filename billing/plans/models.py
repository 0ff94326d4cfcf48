"""Plans as data: each plan has versions effective from an instant; teams are assigned plans
from an instant; per-team overrides and time-bounded add-ons sit on top of the plan."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from metering.core.limits import LIMIT_FIELDS, LimitOverride, PlanLimits
from metering.db import Base

MONEY = Numeric(20, 6)
UNIT_PRICE = Numeric(24, 12)


class Plan(Base):
    __tablename__ = "plans"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )


class PlanVersion(Base):
    """Prices and limits of a plan from `effective_at` until the next version."""

    __tablename__ = "plan_versions"
    __table_args__ = (
        UniqueConstraint("plan_code", "effective_at"),
        CheckConstraint("monthly_fee >= 0 AND one_time_credit >= 0 AND minimum_commitment >= 0"
                        " AND vcpu_second_price >= 0 AND gib_second_price >= 0",
                        name="non_negative_money"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    plan_code: Mapped[str] = mapped_column(ForeignKey("plans.code"))
    effective_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    currency: Mapped[str] = mapped_column(String(3), server_default=text("'usd'"))
    monthly_fee: Mapped[Decimal] = mapped_column(MONEY)
    one_time_credit: Mapped[Decimal] = mapped_column(MONEY)
    credit_enforced: Mapped[bool] = mapped_column(Boolean)
    minimum_commitment: Mapped[Decimal] = mapped_column(MONEY)
    vcpu_second_price: Mapped[Decimal] = mapped_column(UNIT_PRICE)
    gib_second_price: Mapped[Decimal] = mapped_column(UNIT_PRICE)
    # ...and one integer column per limit, added below from `PlanLimits`.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )

    @property
    def limits(self) -> PlanLimits:
        return PlanLimits(**{name: getattr(self, name) for name in LIMIT_FIELDS})


class TeamPlan(Base):
    """A team is on `plan_code` from `effective_at` until its next assignment."""

    __tablename__ = "team_plans"
    __table_args__ = (UniqueConstraint("team_id", "effective_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    plan_code: Mapped[str] = mapped_column(ForeignKey("plans.code"))
    effective_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )


class LimitOverrideRow(Base):
    """Absolute per-team limits replacing the plan's, optionally within [starts_at, ends_at)."""

    __tablename__ = "team_limit_overrides"
    __table_args__ = (Index("ix_team_limit_overrides_team", "team_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    # ...one nullable integer column per limit (null: keep the plan's), added below.
    starts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )

    @property
    def override(self) -> LimitOverride:
        return LimitOverride(start=self.starts_at, end=self.ends_at,
                             **{name: getattr(self, name) for name in LIMIT_FIELDS})


class AddOnRow(Base):
    """+delta on one limit within [starts_at, ends_at), e.g. +100 concurrent for a month."""

    __tablename__ = "team_addons"
    __table_args__ = (
        Index("ix_team_addons_team", "team_id"),
        CheckConstraint("delta > 0", name="positive_delta"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    field: Mapped[str] = mapped_column(String(32))
    delta: Mapped[int] = mapped_column(Integer)
    starts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )


def _limit_columns(model: type[Base], *, nullable: bool) -> None:
    """One integer column per field of `PlanLimits` (Declarative maps columns set on a class
    after it is made), so that a new limit is declared once, in the core."""
    for name in LIMIT_FIELDS:
        setattr(model, name, mapped_column(name, Integer, nullable=nullable))


_limit_columns(PlanVersion, nullable=False)
_limit_columns(LimitOverrideRow, nullable=True)
