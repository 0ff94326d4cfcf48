"""Leases: an admitted sandbox holds a concurrency slot until its created event arrives or
the lease expires."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from metering.db import Base


class Lease(Base):
    __tablename__ = "leases"
    __table_args__ = (
        Index("ix_leases_team_live", "team_id", "expires_at",
              postgresql_where=text("consumed_at IS NULL")),
        Index("ix_leases_sandbox_live", "sandbox_id",
              postgresql_where=text("consumed_at IS NULL")),
        Index("ix_leases_team_created", "team_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(128))
    sandbox_id: Mapped[str] = mapped_column(String(256))
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int | None] = mapped_column(Integer)
    max_duration_s: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    consumed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
