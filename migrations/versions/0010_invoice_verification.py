"""Invoice lines' service periods; the results of re-deriving invoices from raw events

`invoice_lines.service_start` / `service_end`: the stretch of time a line bills for (the plan's
time in the month for fees and usage, the corrected month for adjustments). Lines stored
before this revision have none.

`invoice_verifications`: each time an invoice was re-derived from lifecycle events, plan
versions and the credit ledger (by the close before finalizing it, by the worker after a close,
or by finance's `metering invoices verify`), whether it matched and every difference.

Revision ID: 0010
Revises: 0009
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("invoice_lines", sa.Column("service_start", sa.DateTime(timezone=True)))
    op.add_column("invoice_lines", sa.Column("service_end", sa.DateTime(timezone=True)))
    op.create_table(
        "invoice_verifications",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("invoice_id", sa.String(40), sa.ForeignKey("invoices.id"), nullable=False),
        sa.Column("team_id", sa.String(128), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("differences", postgresql.JSONB, nullable=False),
        sa.CheckConstraint("source IN ('close', 'verify')", name="source"),
    )
    op.create_index("ix_invoice_verifications_invoice", "invoice_verifications",
                    ["invoice_id", "verified_at"])


def downgrade() -> None:
    op.drop_index("ix_invoice_verifications_invoice", "invoice_verifications")
    op.drop_table("invoice_verifications")
    op.drop_column("invoice_lines", "service_end")
    op.drop_column("invoice_lines", "service_start")
