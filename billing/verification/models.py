"""The results of re-deriving invoices from raw events: one row per check of an invoice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from metering.db import Base


class InvoiceVerification(Base):
    """A check of one invoice: by the close before finalizing it (`close`), or by
    `metering invoices verify` and the worker after a close (`verify`)."""

    __tablename__ = "invoice_verifications"
    __table_args__ = (
        Index("ix_invoice_verifications_invoice", "invoice_id", "verified_at"),
        CheckConstraint("source IN ('close', 'verify')", name="source"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    team_id: Mapped[str] = mapped_column(String(128))
    period: Mapped[str] = mapped_column(String(7))
    verified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool] = mapped_column(Boolean)
    # [{team_id, invoice, position, line, stored, recomputed}] or [{error}]; [] when ok.
    differences: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
