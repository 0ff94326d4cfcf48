"""Stripe customers, Stripe invoices (parts of our invoices) and the webhook inbox

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stripe_customers",
        sa.Column("team_id", sa.String(length=128), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"],
                                name=op.f("fk_stripe_customers_team_id_teams")),
        sa.PrimaryKeyConstraint("team_id", name=op.f("pk_stripe_customers")),
        sa.UniqueConstraint("stripe_customer_id",
                            name=op.f("uq_stripe_customers_stripe_customer_id")),
    )
    op.create_table(
        "stripe_invoices",
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.Column("stripe_invoice_id", sa.String(length=64), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("stripe_status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payment_failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"],
                                name=op.f("fk_stripe_invoices_invoice_id_invoices")),
        sa.PrimaryKeyConstraint("invoice_id", "part", name=op.f("pk_stripe_invoices")),
        sa.UniqueConstraint("stripe_invoice_id",
                            name=op.f("uq_stripe_invoices_stripe_invoice_id")),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index("ix_stripe_events_pending", "stripe_events", ["next_attempt_at"],
                    unique=False, postgresql_where=sa.text("handled_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_stripe_events_pending", table_name="stripe_events",
                  postgresql_where=sa.text("handled_at IS NULL"))
    op.drop_table("stripe_events")
    op.drop_table("stripe_invoices")
    op.drop_table("stripe_customers")
