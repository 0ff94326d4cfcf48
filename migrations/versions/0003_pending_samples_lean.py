"""pending samples keep only what the execution row does not: team and sandbox live there

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every pending sample's execution gets its row before the columns go.
    op.execute("""
        INSERT INTO executions (execution_id, team_id, sandbox_id, last_event_at)
        SELECT execution_id, min(team_id), min(sandbox_id), max(time)
        FROM host_stats_pending GROUP BY execution_id
        ON CONFLICT (execution_id) DO NOTHING
    """)
    op.drop_column("host_stats_pending", "team_id")
    op.drop_column("host_stats_pending", "sandbox_id")


def downgrade() -> None:
    op.add_column("host_stats_pending", sa.Column("team_id", sa.String(length=128), nullable=True))
    op.add_column("host_stats_pending", sa.Column("sandbox_id", sa.String(length=256), nullable=True))
    op.execute("""
        UPDATE host_stats_pending p SET team_id = e.team_id, sandbox_id = e.sandbox_id
        FROM executions e WHERE e.execution_id = p.execution_id
    """)
    op.alter_column("host_stats_pending", "team_id", nullable=False)
    op.alter_column("host_stats_pending", "sandbox_id", nullable=False)
