"""The credit ledger: append-only grants, and applications of grants to invoices."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from billing.plans.models import MONEY
from metering.db import Base


class CreditGrant(Base):
    __tablename__ = "credit_grants"
    __table_args__ = (
        Index("ix_credit_grants_team", "team_id"),
        CheckConstraint("amount > 0", name="positive_amount"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3), server_default=text("'usd'"))
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))  # plan | manual | carry_forward
    # Makes a grant happen once however often its cause repeats (e.g. "plan:hobby:team_1").
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )


class CreditApplication(Base):
    """Part of a grant consumed by an invoice (written when the invoice is finalized)."""

    __tablename__ = "credit_applications"
    __table_args__ = (
        Index("ix_credit_applications_grant", "grant_id"),
        Index("ix_credit_applications_team", "team_id"),
        CheckConstraint("amount > 0", name="positive_amount"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("credit_grants.id"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    invoice_id: Mapped[str] = mapped_column(String(40))
    period: Mapped[str] = mapped_column(String(7))
    amount: Mapped[Decimal] = mapped_column(MONEY)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
