"""index executions that ended at an inferred end by team and that end

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_executions_team_inferred_end", "executions", ["team_id", "inferred_end_at"],
                    unique=False, postgresql_where=sa.text("inferred_end_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_executions_team_inferred_end", table_name="executions")
