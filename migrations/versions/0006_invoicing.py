"""month close bookkeeping (owned by the invoicing work)

Close runs; the instant each invoice's usage was read (late-usage detection); the prices each
billed usage row was billed at; exact GiB-second quantities on lines; lookup indexes.

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invoice_close_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("forced", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("usage_read_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("teams_considered", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("invoices_made", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("already_existed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("summary", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'completed_with_errors', 'failed')",
            name=op.f("ck_invoice_close_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_close_runs")),
    )
    op.create_index("ix_invoice_close_runs_period", "invoice_close_runs",
                    ["period", "started_at"], unique=False)
    op.add_column("invoices", sa.Column("usage_read_at", sa.DateTime(timezone=True),
                                        nullable=True))
    op.create_index("ix_invoices_team_period", "invoices", ["team_id", "period"], unique=False)
    op.add_column("invoice_usage", sa.Column("vcpu_second_price",
                                             sa.Numeric(precision=24, scale=12), nullable=True))
    op.add_column("invoice_usage", sa.Column("gib_second_price",
                                             sa.Numeric(precision=24, scale=12), nullable=True))
    op.create_index("ix_invoice_usage_invoice", "invoice_usage", ["invoice_id"], unique=False)
    op.alter_column("invoice_lines", "quantity", type_=sa.Numeric(precision=32, scale=13),
                    existing_type=sa.Numeric(precision=30, scale=12), existing_nullable=False)


def downgrade() -> None:
    op.alter_column("invoice_lines", "quantity", type_=sa.Numeric(precision=30, scale=12),
                    existing_type=sa.Numeric(precision=32, scale=13), existing_nullable=False)
    op.drop_index("ix_invoice_usage_invoice", table_name="invoice_usage")
    op.drop_column("invoice_usage", "gib_second_price")
    op.drop_column("invoice_usage", "vcpu_second_price")
    op.drop_index("ix_invoices_team_period", table_name="invoices")
    op.drop_column("invoices", "usage_read_at")
    op.drop_index("ix_invoice_close_runs_period", table_name="invoice_close_runs")
    op.drop_table("invoice_close_runs")
