"""Executions and their allocation segments, derived from lifecycle events.

An execution's row and segments are recomputed from all its lifecycle events whenever one
arrives, so they are a function of the event set, never of arrival order. `last_event_at` is
the newest event of any type (host_stats included) and decides the inferred end.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from metering.db import Base


class Execution(Base):
    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_team_start", "team_id", "start_at"),
        Index("ix_executions_sandbox", "sandbox_id"),
        Index("ix_executions_open", "team_id",
              postgresql_where=text("end_at IS NULL AND inferred_end_at IS NULL")),
        Index("ix_executions_team_inferred_end", "team_id", "inferred_end_at",
              postgresql_where=text("inferred_end_at IS NOT NULL")),
        # Room on each page, so the liveness pass's `last_event_at` updates stay HOT.
        {"postgresql_with": {"fillfactor": "80"}},
    )

    execution_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(128))
    sandbox_id: Mapped[str] = mapped_column(String(256))
    template_id: Mapped[str | None] = mapped_column(String(256))
    start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    start_kind: Mapped[str | None] = mapped_column(String(16))
    vcpu: Mapped[int | None] = mapped_column(Integer)
    memory_mib: Mapped[int | None] = mapped_column(Integer)
    disk_mib: Mapped[int | None] = mapped_column(Integer)
    end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_kind: Mapped[str | None] = mapped_column(String(16))
    end_reason: Mapped[str | None] = mapped_column(String(32))
    # Set by the settle sweep once an execution without a true end went stale: it ended at its
    # newest event. Cleared when any newer event arrives (the execution is open again).
    inferred_end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )


class ExecutionSegment(Base):
    __tablename__ = "execution_segments"
    __table_args__ = (
        PrimaryKeyConstraint("execution_id", "seq"),
        Index("ix_execution_segments_team_start", "team_id", "start_at"),
        Index("ix_execution_segments_team_end", "team_id", "end_at"),
    )

    execution_id: Mapped[str] = mapped_column(String(256))
    seq: Mapped[int] = mapped_column(Integer)
    team_id: Mapped[str] = mapped_column(String(128))
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)


class UsageRollup(Base):
    """Usage of settled executions (true or inferred end) per team and UTC hour.

    Changed by deltas appended to `usage_rollup_deltas` in the same transaction that changes
    an execution (subtract its old contribution, add its new one), folded in here by a job;
    reads sum both (`ROLLUPS` in `metering.executions.reads`), so reads of long ranges sum
    hours instead of integrating every execution. Open executions are integrated live.
    """

    __tablename__ = "usage_rollups"
    __table_args__ = (PrimaryKeyConstraint("team_id", "hour"),)

    team_id: Mapped[str] = mapped_column(String(128))
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    vcpu_ms: Mapped[int] = mapped_column(BigInteger)
    mib_ms: Mapped[int] = mapped_column(BigInteger)


# Append-only: concurrent batches never wait on one row (a team's current hour would be one).
# No key: rows are only summed, and `fold_rollup_deltas` empties the table into the rollups.
usage_rollup_deltas = Table(
    "usage_rollup_deltas", Base.metadata,
    Column("team_id", String(128), nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("vcpu_ms", BigInteger, nullable=False),
    Column("mib_ms", BigInteger, nullable=False),
    Index("ix_usage_rollup_deltas_team_id", "team_id", "hour"),
)
