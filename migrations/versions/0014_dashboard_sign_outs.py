"""dashboard sessions ended by sign-out

Revision ID: 0014
Revises: 0013
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sign_outs",
        sa.Column("session_digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_digest", name=op.f("pk_dashboard_sign_outs")),
    )
    op.create_index(op.f("ix_dashboard_sign_outs_expires_at"), "dashboard_sign_outs",
                    ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_dashboard_sign_outs_expires_at"), table_name="dashboard_sign_outs")
    op.drop_table("dashboard_sign_outs")
