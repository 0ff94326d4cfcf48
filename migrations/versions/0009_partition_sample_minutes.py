"""sample_minutes partitioned by month of `minute`; the retention horizon of samples

One partition per UTC calendar month, named `sample_minutes_pYYYY_MM`, for every month that
holds rows plus the current and the next month; later months are made by the service
(`metering.retention`: ahead of time, and on demand by the fold). `sample_retention` holds at
most one row: the first month whose samples are still kept (older ones were dropped whole by
the retention job, and the fold discards late samples for them).

The upgrade copies the table (one transaction): on a large installation, run it in a quiet
hour. The downgrade copies the rows back into a plain table.

Revision ID: 0009
Revises: 0008
"""
from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = ("execution_id, minute, team_id, sandbox_id, samples, cpu_samples, cpu_sum, cpu_max, "
           "mem_samples, mem_sum, mem_max, last_at, tags")


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("execution_id", sa.String(length=256), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("team_id", sa.String(length=128), nullable=False),
        sa.Column("sandbox_id", sa.String(length=256), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("cpu_samples", sa.Integer(), nullable=False),
        sa.Column("cpu_sum", sa.BigInteger(), nullable=False),
        sa.Column("cpu_max", sa.Integer(), nullable=True),
        sa.Column("mem_samples", sa.Integer(), nullable=False),
        sa.Column("mem_sum", sa.BigInteger(), nullable=False),
        sa.Column("mem_max", sa.Integer(), nullable=True),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.BigInteger()), nullable=False),
    ]


def _next_month(month: datetime) -> datetime:
    return month.replace(year=month.year + 1, month=1) if month.month == 12 \
        else month.replace(month=month.month + 1)


def upgrade() -> None:
    op.rename_table("sample_minutes", "sample_minutes_unpartitioned")
    op.execute("ALTER TABLE sample_minutes_unpartitioned "
               "RENAME CONSTRAINT pk_sample_minutes TO pk_sample_minutes_unpartitioned")
    op.create_table(
        "sample_minutes", *_columns(),
        sa.PrimaryKeyConstraint("execution_id", "minute", name=op.f("pk_sample_minutes")),
        postgresql_partition_by="RANGE (minute)",
    )
    bind = op.get_bind()
    months = {row[0] for row in bind.execute(sa.text(
        "SELECT DISTINCT date_trunc('month', minute, 'UTC') FROM sample_minutes_unpartitioned"))}
    now = bind.execute(sa.text("SELECT date_trunc('month', now(), 'UTC')")).scalar_one()
    months |= {now, _next_month(now.astimezone(UTC))}
    for month in sorted(m.astimezone(UTC) for m in months):
        # A new parent: nothing reads it yet, so PARTITION OF (which locks the parent
        # exclusively) is fine here; the service attaches its partitions instead.
        op.execute(f"CREATE TABLE sample_minutes_p{month.year:04d}_{month.month:02d} "
                   f"PARTITION OF sample_minutes FOR VALUES FROM ('{month.isoformat()}') "
                   f"TO ('{_next_month(month).isoformat()}')")
    op.execute(f"INSERT INTO sample_minutes ({COLUMNS}) "
               f"SELECT {COLUMNS} FROM sample_minutes_unpartitioned")
    op.drop_table("sample_minutes_unpartitioned")
    op.create_table(
        "sample_retention",
        sa.Column("id", sa.SmallInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("kept_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_sample_retention_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sample_retention")),
    )


def downgrade() -> None:
    op.drop_table("sample_retention")
    op.create_table(
        "sample_minutes_unpartitioned", *_columns(),
        sa.PrimaryKeyConstraint("execution_id", "minute",
                                name=op.f("pk_sample_minutes_unpartitioned")),
    )
    op.execute(f"INSERT INTO sample_minutes_unpartitioned ({COLUMNS}) "
               f"SELECT {COLUMNS} FROM sample_minutes")
    op.drop_table("sample_minutes")  # and every partition with it
    op.rename_table("sample_minutes_unpartitioned", "sample_minutes")
    op.execute("ALTER TABLE sample_minutes "
               "RENAME CONSTRAINT pk_sample_minutes_unpartitioned TO pk_sample_minutes")
