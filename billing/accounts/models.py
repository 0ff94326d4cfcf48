"""Billing's settings of a team, in billing's own table (metering's `teams` knows nothing of
how a team pays)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, text
from sqlalchemy.orm import Mapped, mapped_column

from metering.db import Base

CHARGE_AUTOMATICALLY = "charge_automatically"


class TeamBillingSettings(Base):
    __tablename__ = "team_billing_settings"

    team_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    # Invoices are charged automatically or sent for payment (Stripe's collection_method).
    collection_method: Mapped[str] = mapped_column(
        String(32), server_default=text("'charge_automatically'"))
