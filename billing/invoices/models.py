"""Invoices, their lines, the usage each invoice billed, gap-free numbering, and close runs.

States: draft -> finalized (numbered) -> synced -> paid | payment_failed | void; a finalized
invoice whose Stripe sync keeps failing shows `sync_failed` until a retry succeeds. A
finalized invoice never changes: corrections are adjustment lines on a later invoice, and a
void is followed by a correcting invoice (`corrects_invoice_id`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from billing.plans.models import MONEY, UNIT_PRICE
from metering.db import Base

INVOICE_STATUSES = ("draft", "finalized", "synced", "sync_failed", "paid", "payment_failed",
                    "void")


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        # One period invoice per team and month, whatever runs the close and how often.
        Index("uq_invoices_team_period", "team_id", "period", unique=True,
              postgresql_where=text("kind = 'period'")),
        Index("ix_invoices_period_status", "period", "status"),
        Index("ix_invoices_team_period", "team_id", "period"),
        CheckConstraint("total >= 0", name="non_negative_total"),
        CheckConstraint(
            "status IN ('draft', 'finalized', 'synced', 'sync_failed', 'paid', "
            "'payment_failed', 'void')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    period: Mapped[str] = mapped_column(String(7))  # "2026-10"
    kind: Mapped[str] = mapped_column(String(16))  # period | correction
    corrects_invoice_id: Mapped[str | None] = mapped_column(ForeignKey("invoices.id"))
    number: Mapped[str | None] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[Decimal] = mapped_column(MONEY)
    credits_applied: Mapped[Decimal] = mapped_column(MONEY)
    total: Mapped[Decimal] = mapped_column(MONEY)
    carry_forward: Mapped[Decimal] = mapped_column(MONEY, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()"))
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    payment_failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Stripe
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    stripe_status: Mapped[str | None] = mapped_column(String(32))
    sync_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    sync_error: Mapped[str | None] = mapped_column(Text)
    next_sync_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the close started reading the usage this invoice bills. Executions changed after
    # it (less a margin for transactions in flight) are what later closes re-examine for
    # late usage; see `billing.invoices.repository.ADJUSTMENT_CANDIDATES`.
    usage_read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"
    __table_args__ = (Index("ix_invoice_lines_invoice", "invoice_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text)
    # 13 places: GiB-seconds are MiB-ms / 1,024,000 = 2^13 * 5^3, exact at 13 digits.
    quantity: Mapped[Decimal] = mapped_column(Numeric(32, 13))
    unit_price: Mapped[Decimal] = mapped_column(UNIT_PRICE)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    price_version_id: Mapped[str | None] = mapped_column(String(40))
    plan_code: Mapped[str | None] = mapped_column(String(64))
    period: Mapped[str | None] = mapped_column(String(7))  # the month an adjustment corrects
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # internal ids
    # What the line bills for, [start, end); none on lines stored before these columns.
    service_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    service_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class InvoiceUsage(Base):
    """The usage an invoice billed for a usage period and price version; later usage for a
    closed period is billed as the difference against the sum of these."""

    __tablename__ = "invoice_usage"
    __table_args__ = (
        Index("ix_invoice_usage_team_period", "team_id", "usage_period"),
        Index("ix_invoice_usage_invoice", "invoice_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    usage_period: Mapped[str] = mapped_column(String(7))
    price_version_id: Mapped[str] = mapped_column(String(40))
    vcpu_ms: Mapped[int] = mapped_column(BigInteger)
    mib_ms: Mapped[int] = mapped_column(BigInteger)
    # The prices this usage was billed at, so a later negative adjustment for a price version
    # that no longer has usage still knows its prices.
    vcpu_second_price: Mapped[Decimal | None] = mapped_column(UNIT_PRICE)
    gib_second_price: Mapped[Decimal | None] = mapped_column(UNIT_PRICE)


class InvoiceNumberSequence(Base):
    """Gap-free numbering: the row of a year is locked while a number is taken."""

    __tablename__ = "invoice_number_sequences"

    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer)


class CloseRun(Base):
    """One run of a month close (dry runs are not recorded).

    A period counts as closed from its first run on: late usage for it is then billed as
    adjustments on later invoices. A run that crashed stays `running` with a stale
    `heartbeat_at`; running the close again resumes it (existing invoices are skipped).
    """

    __tablename__ = "invoice_close_runs"
    __table_args__ = (
        Index("ix_invoice_close_runs_period", "period", "started_at"),
        CheckConstraint("status IN ('running', 'completed', 'completed_with_errors', 'failed')",
                        name="status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    period: Mapped[str] = mapped_column(String(7))
    status: Mapped[str] = mapped_column(String(24))
    forced: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    usage_read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    teams_considered: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    invoices_made: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    already_existed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
