"""liveness log entries kept in buckets of executions

Ingest writes a batch's newest sample time per execution as one row per bucket of executions
(a hash of the execution id), and the liveness pass drains, writes and commits one bucket at a
time. An ingest batch that locks an execution (a lifecycle event) then waits at most for one
bucket's writes instead of the whole pass's (hundreds of milliseconds at 28,800 running).
Rows of before (bucket 0) are drained by the pass of bucket 0.

Revision ID: 0016
Revises: 0015
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("liveness_log", sa.Column(
        "bucket", sa.SmallInteger(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    # Every row is drained by the one pass of before, whatever bucket it was in.
    op.drop_column("liveness_log", "bucket")
