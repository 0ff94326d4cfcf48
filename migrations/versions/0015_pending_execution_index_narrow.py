"""pending samples indexed by execution alone

A sandbox's metrics read its pending samples by execution (at most a few minutes of them, so
the time needs no place in the index). Without the time every key of an execution repeats,
and PostgreSQL keeps each execution's entries as one deduplicated posting list: measured on
600,000 samples (1,000 executions), the index is 8 MB instead of 47 and a batch of 1,000
samples costs the database about 1 ms less to insert (4.0 against 4.9 ms with this index
alone). The index is made again on every attached minute slice (each locked against writes
while its index builds: seconds at most, slices hold a minute each).

Revision ID: 0015
Revises: 0014
"""
from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX ix_host_stats_pending_execution_id")
    op.execute("CREATE INDEX ix_host_stats_pending_execution_id "
               "ON host_stats_pending (execution_id)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_host_stats_pending_execution_id")
    op.execute("CREATE INDEX ix_host_stats_pending_execution_id "
               "ON host_stats_pending (execution_id, time)")
