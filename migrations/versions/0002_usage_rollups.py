"""usage rollups per team-hour and inferred ends of stale executions

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("inferred_end_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_index("ix_executions_open", table_name="executions")
    op.create_index("ix_executions_open", "executions", ["team_id"], unique=False,
                    postgresql_where=sa.text("end_at IS NULL AND inferred_end_at IS NULL"))
    op.create_table(
        "usage_rollups",
        sa.Column("team_id", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vcpu_ms", sa.BigInteger(), nullable=False),
        sa.Column("mib_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "hour", name=op.f("pk_usage_rollups")),
    )


def downgrade() -> None:
    op.drop_table("usage_rollups")
    op.drop_index("ix_executions_open", table_name="executions")
    op.create_index("ix_executions_open", "executions", ["team_id"], unique=False,
                    postgresql_where=sa.text("end_at IS NULL"))
    op.drop_column("executions", "inferred_end_at")
