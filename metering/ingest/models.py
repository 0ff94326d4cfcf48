"""What ingest stores.

- `lifecycle_events`: every lifecycle event, keyed by (source, id), with a content digest so
  that a replay is a duplicate and a changed replay a conflict.
- `host_stats_pending`: per-second samples as they arrive, keyed by (source, id, time), in
  minute slices (`metering.ingest.slices`); a fold job moves a slice into `sample_minutes`
  once its minute is well past, and drops it.
- `liveness_log`: per batch, the newest sample time of each of its executions, drained by the
  liveness pass into `executions.last_event_at`.
- `sample_minutes`: one row per execution-minute with avg/max figures and, for exact
  deduplication forever, one 64-bit tag per sample: 48 bits of the (source, id) hash and 16
  bits of the content hash. About 8 bytes a sample instead of a row each. Partitioned by
  UTC calendar month of `minute` (`sample_minutes_pYYYY_MM`, see `metering.ingest.partitions`), so
  that old months are dropped whole.
- `sample_retention`: at most one row, the first month whose samples are still kept.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from metering.db import Base


class LifecycleEventRow(Base):
    __tablename__ = "lifecycle_events"
    __table_args__ = (
        PrimaryKeyConstraint("source", "id"),
        Index("ix_lifecycle_events_execution", "execution_id"),
    )

    source: Mapped[str] = mapped_column(String(1024))
    id: Mapped[str] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    team_id: Mapped[str] = mapped_column(String(128))
    execution_id: Mapped[str] = mapped_column(String(256))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )


class PendingSample(Base):
    __tablename__ = "host_stats_pending"
    # Partitioned by minute (`metering.ingest.slices`): a folded minute leaves whole. The key
    # holds the time, as a partition key must; a retry carries the same time. The time comes
    # first: what arrives now is inserted at the index's newest edge, not all over it
    # (migration 0017).
    __table_args__ = (PrimaryKeyConstraint("time", "source", "id"),
                      # A sandbox's metrics read its own pending samples, not all of them
                      # (a few minutes of them: the time adds nothing; without it each
                      # execution's entries share one deduplicated posting list).
                      Index("ix_host_stats_pending_execution_id", "execution_id"),
                      {"postgresql_partition_by": "RANGE (time)"})

    source: Mapped[str] = mapped_column(String(1024))
    id: Mapped[str] = mapped_column(String(256))
    # The execution row (made at ingest) carries the team and sandbox.
    execution_id: Mapped[str] = mapped_column(String(256))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cpu_centipct: Mapped[int | None] = mapped_column(Integer)
    memory_used_mib: Mapped[int | None] = mapped_column(Integer)
    tag: Mapped[int] = mapped_column(BigInteger)


class LivenessEntry(Base):
    """One ingest batch's newest sample time per execution of one bucket (a hash of the
    execution id), until the liveness pass carries them into `executions.last_event_at`.
    `carried`: put back by a pass that did not write it yet (see
    `metering.ingest.repository.refresh_liveness`)."""

    __tablename__ = "liveness_log"

    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    carried: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    bucket: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    execution_ids: Mapped[list[str]] = mapped_column(ARRAY(String))
    newest: Mapped[list[datetime]] = mapped_column(ARRAY(DateTime(timezone=True)))


class SampleMinute(Base):
    __tablename__ = "sample_minutes"
    # Partitions are made by `metering.ingest.partitions`, never by the ORM.
    __table_args__ = (PrimaryKeyConstraint("execution_id", "minute"),
                      {"postgresql_partition_by": "RANGE (minute)"})

    execution_id: Mapped[str] = mapped_column(String(256))
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    team_id: Mapped[str] = mapped_column(String(128))
    sandbox_id: Mapped[str] = mapped_column(String(256))
    samples: Mapped[int] = mapped_column(Integer)
    cpu_samples: Mapped[int] = mapped_column(Integer)
    cpu_sum: Mapped[int] = mapped_column(BigInteger)
    cpu_max: Mapped[int | None] = mapped_column(Integer)
    mem_samples: Mapped[int] = mapped_column(Integer)
    mem_sum: Mapped[int] = mapped_column(BigInteger)
    mem_max: Mapped[int | None] = mapped_column(Integer)
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tags: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))


class SampleRetention(Base):
    """The retention horizon of samples: months before `kept_from` were dropped (or never
    held anything), and samples of those months are discarded by the fold. No row: nothing
    has been dropped yet."""

    __tablename__ = "sample_retention"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False,
                                    server_default=text("1"))
    kept_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
