"""Stripe tables: the customer of each team, the Stripe invoices carrying our invoices, and
the inbox of webhook events.

`stripe_invoices` has one row per Stripe invoice ("part") of one of our invoices: one part
normally, more when an invoice has over 250 lines (see `planning`). The row is written the
moment Stripe answers the create call, so a crash later never loses the id. The invoice's own
`stripe_invoice_id` mirrors part 0 for the dashboard.

`stripe_events` is the inbox: an event is stored by its Stripe id before anything else, so a
redelivery finds it and does nothing; `handled_at` marks it handled, exactly once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from metering.db import Base


class StripeCustomer(Base):
    __tablename__ = "stripe_customers"

    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), primary_key=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()"))


class StripeInvoice(Base):
    __tablename__ = "stripe_invoices"

    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    parts: Mapped[int] = mapped_column(Integer)
    stripe_invoice_id: Mapped[str] = mapped_column(String(64), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(64))
    item_count: Mapped[int] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(BigInteger)  # what its items must sum to
    stripe_status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    collected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # pay/send
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    payment_failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StripeEvent(Base):
    __tablename__ = "stripe_events"
    __table_args__ = (
        Index("ix_stripe_events_pending", "next_attempt_at",
              postgresql_where=text("handled_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Stripe's evt_...
    type: Mapped[str] = mapped_column(String(100))
    object_id: Mapped[str | None] = mapped_column(String(255))  # data.object.id
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    handled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # ignored | applied | unchanged: what handling did, for finance's audit.
    outcome: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
