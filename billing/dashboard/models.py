"""Dashboard sessions ended by sign-out: a signed cookie stays valid until it expires, so
sign-out records it here and `signed_in` refuses it from then on."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from metering.db import Base


class DashboardSignOut(Base):
    __tablename__ = "dashboard_sign_outs"

    # SHA-256 of the cookie's MAC: the table never holds a usable cookie.
    session_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
