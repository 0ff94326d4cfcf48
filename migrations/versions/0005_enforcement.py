"""kill orders, outbound messages (owned by the enforcement work)

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kill_orders",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=128), nullable=False),
        sa.Column("sandbox_id", sa.String(length=256), nullable=False),
        sa.Column("execution_id", sa.String(length=256), nullable=False),
        sa.Column("action", sa.String(length=16), server_default=sa.text("'kill'"),
                  nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_kill_orders")),
        sa.UniqueConstraint("id", name=op.f("uq_kill_orders_id")),
        sa.UniqueConstraint("execution_id", name=op.f("uq_kill_orders_execution_id")),
    )
    op.create_index("ix_kill_orders_team_seq", "kill_orders", ["team_id", "seq"], unique=False)
    op.create_table(
        "outbox_messages",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.String(length=128), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("abandoned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_outbox_messages")),
        sa.UniqueConstraint("id", name=op.f("uq_outbox_messages_id")),
        sa.UniqueConstraint("key", name=op.f("uq_outbox_messages_key")),
    )
    op.create_index("ix_outbox_messages_due", "outbox_messages", ["next_attempt_at"],
                    unique=False,
                    postgresql_where=sa.text("delivered_at IS NULL AND abandoned_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_outbox_messages_due", table_name="outbox_messages")
    op.drop_table("outbox_messages")
    op.drop_index("ix_kill_orders_team_seq", table_name="kill_orders")
    op.drop_table("kill_orders")
