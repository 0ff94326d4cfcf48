"""plans (versioned, seeded with the contract's defaults), credits, leases, invoices

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 16:10:26.409029
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('invoice_number_sequences',
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('last_number', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('year', name=op.f('pk_invoice_number_sequences'))
    )
    op.create_table('leases',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('sandbox_id', sa.String(length=256), nullable=False),
    sa.Column('vcpu', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.Column('disk_mib', sa.Integer(), nullable=True),
    sa.Column('max_duration_s', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('consumed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_leases'))
    )
    op.create_index('ix_leases_sandbox_live', 'leases', ['sandbox_id'], unique=False, postgresql_where=sa.text('consumed_at IS NULL'))
    op.create_index('ix_leases_team_created', 'leases', ['team_id', 'created_at'], unique=False)
    op.create_index('ix_leases_team_live', 'leases', ['team_id', 'expires_at'], unique=False, postgresql_where=sa.text('consumed_at IS NULL'))
    op.create_table('plans',
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_plans'))
    )
    op.create_table('credit_grants',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('amount', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('currency', sa.String(length=3), server_default=sa.text("'usd'"), nullable=False),
    sa.Column('priority', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('granted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_credit_grants_positive_amount')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_credit_grants_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_grants')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_credit_grants_idempotency_key'))
    )
    op.create_index('ix_credit_grants_team', 'credit_grants', ['team_id'], unique=False)
    op.create_table('invoices',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('corrects_invoice_id', sa.String(length=40), nullable=True),
    sa.Column('number', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('subtotal', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('credits_applied', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('total', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('carry_forward', sa.Numeric(precision=20, scale=6), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finalized_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('voided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('payment_failed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stripe_invoice_id', sa.String(length=64), nullable=True),
    sa.Column('stripe_status', sa.String(length=32), nullable=True),
    sa.Column('sync_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('sync_error', sa.Text(), nullable=True),
    sa.Column('next_sync_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('draft', 'finalized', 'synced', 'sync_failed', 'paid', 'payment_failed', 'void')", name=op.f('ck_invoices_status')),
    sa.CheckConstraint('total >= 0', name=op.f('ck_invoices_non_negative_total')),
    sa.ForeignKeyConstraint(['corrects_invoice_id'], ['invoices.id'], name=op.f('fk_invoices_corrects_invoice_id_invoices')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_invoices_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoices')),
    sa.UniqueConstraint('number', name=op.f('uq_invoices_number')),
    sa.UniqueConstraint('stripe_invoice_id', name=op.f('uq_invoices_stripe_invoice_id'))
    )
    op.create_index('ix_invoices_period_status', 'invoices', ['period', 'status'], unique=False)
    op.create_index('uq_invoices_team_period', 'invoices', ['team_id', 'period'], unique=True, postgresql_where=sa.text("kind = 'period'"))
    op.create_table('plan_versions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('plan_code', sa.String(length=64), nullable=False),
    sa.Column('effective_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('currency', sa.String(length=3), server_default=sa.text("'usd'"), nullable=False),
    sa.Column('monthly_fee', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('one_time_credit', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('credit_enforced', sa.Boolean(), nullable=False),
    sa.Column('minimum_commitment', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('vcpu_second_price', sa.Numeric(precision=24, scale=12), nullable=False),
    sa.Column('gib_second_price', sa.Numeric(precision=24, scale=12), nullable=False),
    sa.Column('max_execution_s', sa.Integer(), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('starts_per_second', sa.Integer(), nullable=False),
    sa.Column('max_vcpu', sa.Integer(), nullable=False),
    sa.Column('max_memory_mib', sa.Integer(), nullable=False),
    sa.Column('max_disk_mib', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('monthly_fee >= 0 AND one_time_credit >= 0 AND minimum_commitment >= 0 AND vcpu_second_price >= 0 AND gib_second_price >= 0', name=op.f('ck_plan_versions_non_negative_money')),
    sa.ForeignKeyConstraint(['plan_code'], ['plans.code'], name=op.f('fk_plan_versions_plan_code_plans')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_plan_versions')),
    sa.UniqueConstraint('plan_code', 'effective_at', name=op.f('uq_plan_versions_plan_code'))
    )
    op.create_table('team_addons',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('field', sa.String(length=32), nullable=False),
    sa.Column('delta', sa.Integer(), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('delta > 0', name=op.f('ck_team_addons_positive_delta')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_team_addons_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_team_addons'))
    )
    op.create_index('ix_team_addons_team', 'team_addons', ['team_id'], unique=False)
    op.create_table('team_limit_overrides',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('max_execution_s', sa.Integer(), nullable=True),
    sa.Column('concurrency', sa.Integer(), nullable=True),
    sa.Column('starts_per_second', sa.Integer(), nullable=True),
    sa.Column('max_vcpu', sa.Integer(), nullable=True),
    sa.Column('max_memory_mib', sa.Integer(), nullable=True),
    sa.Column('max_disk_mib', sa.Integer(), nullable=True),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_team_limit_overrides_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_team_limit_overrides'))
    )
    op.create_index('ix_team_limit_overrides_team', 'team_limit_overrides', ['team_id'], unique=False)
    op.create_table('team_plans',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('plan_code', sa.String(length=64), nullable=False),
    sa.Column('effective_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['plan_code'], ['plans.code'], name=op.f('fk_team_plans_plan_code_plans')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_team_plans_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_team_plans')),
    sa.UniqueConstraint('team_id', 'effective_at', name=op.f('uq_team_plans_team_id'))
    )
    op.create_table('credit_applications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('grant_id', sa.String(length=40), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('amount', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_credit_applications_positive_amount')),
    sa.ForeignKeyConstraint(['grant_id'], ['credit_grants.id'], name=op.f('fk_credit_applications_grant_id_credit_grants')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_credit_applications_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_applications'))
    )
    op.create_index('ix_credit_applications_grant', 'credit_applications', ['grant_id'], unique=False)
    op.create_index('ix_credit_applications_team', 'credit_applications', ['team_id'], unique=False)
    op.create_table('invoice_lines',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=30, scale=12), nullable=False),
    sa.Column('unit_price', sa.Numeric(precision=24, scale=12), nullable=False),
    sa.Column('amount', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('price_version_id', sa.String(length=40), nullable=True),
    sa.Column('plan_code', sa.String(length=64), nullable=True),
    sa.Column('period', sa.String(length=7), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_invoice_lines_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice_lines'))
    )
    op.create_index('ix_invoice_lines_invoice', 'invoice_lines', ['invoice_id', 'position'], unique=False)
    op.create_table('invoice_usage',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('usage_period', sa.String(length=7), nullable=False),
    sa.Column('price_version_id', sa.String(length=40), nullable=False),
    sa.Column('vcpu_ms', sa.BigInteger(), nullable=False),
    sa.Column('mib_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_invoice_usage_invoice_id_invoices')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_invoice_usage_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice_usage'))
    )
    op.create_index('ix_invoice_usage_team_period', 'invoice_usage', ['team_id', 'usage_period'], unique=False)
    op.add_column('teams', sa.Column('spend_limit', sa.Numeric(precision=20, scale=6), nullable=True))
    op.add_column('teams', sa.Column('collection_method', sa.String(length=32), server_default=sa.text("'charge_automatically'"), nullable=False))
    seed_plans()


# The contract's default plans, effective since the epoch so that all usage has a price.
DEFAULT_PLANS = [
    # code, name, fee, credit, enforced, commitment, max_s, concurrent, starts/s, vcpu, mem, disk
    ("hobby", "Hobby", "0", "100", True, "0", 3600, 20, 1, 8, 8192, 10240),
    ("pro", "Pro", "150", "0", False, "0", 86400, 100, 5, 32, 65536, 20480),
    ("enterprise", "Enterprise", "0", "0", False, "3000", 86400, 1100, 20, 32, 131072, 51200),
]


def seed_plans() -> None:
    for code, name, fee, credit, enforced, commitment, max_s, conc, starts, vcpu, mem, disk in (
        DEFAULT_PLANS
    ):
        op.execute(sa.text("INSERT INTO plans (code, name) VALUES (:c, :n)").bindparams(c=code, n=name))
        op.execute(sa.text("""
            INSERT INTO plan_versions (id, plan_code, effective_at, currency, monthly_fee,
                one_time_credit, credit_enforced, minimum_commitment, vcpu_second_price,
                gib_second_price, max_execution_s, concurrency, starts_per_second, max_vcpu,
                max_memory_mib, max_disk_mib)
            VALUES (:id, :c, '1970-01-01T00:00:00Z', 'usd', CAST(:fee AS numeric),
                CAST(:credit AS numeric), :enforced, CAST(:commitment AS numeric),
                0.000014, 0.0000045, :max_s, :conc, :starts, :vcpu, :mem, :disk)
        """).bindparams(id=f"pv_{code}_1", c=code, fee=fee, credit=credit, enforced=enforced,
                        commitment=commitment, max_s=max_s, conc=conc, starts=starts,
                        vcpu=vcpu, mem=mem, disk=disk))


def downgrade() -> None:
    op.drop_column('teams', 'collection_method')
    op.drop_column('teams', 'spend_limit')
    op.drop_index('ix_invoice_usage_team_period', table_name='invoice_usage')
    op.drop_table('invoice_usage')
    op.drop_index('ix_invoice_lines_invoice', table_name='invoice_lines')
    op.drop_table('invoice_lines')
    op.drop_index('ix_credit_applications_team', table_name='credit_applications')
    op.drop_index('ix_credit_applications_grant', table_name='credit_applications')
    op.drop_table('credit_applications')
    op.drop_table('team_plans')
    op.drop_index('ix_team_limit_overrides_team', table_name='team_limit_overrides')
    op.drop_table('team_limit_overrides')
    op.drop_index('ix_team_addons_team', table_name='team_addons')
    op.drop_table('team_addons')
    op.drop_table('plan_versions')
    op.drop_index('uq_invoices_team_period', table_name='invoices', postgresql_where=sa.text("kind = 'period'"))
    op.drop_index('ix_invoices_period_status', table_name='invoices')
    op.drop_table('invoices')
    op.drop_index('ix_credit_grants_team', table_name='credit_grants')
    op.drop_table('credit_grants')
    op.drop_table('plans')
    op.drop_index('ix_leases_team_live', table_name='leases', postgresql_where=sa.text('consumed_at IS NULL'))
    op.drop_index('ix_leases_team_created', table_name='leases')
    op.drop_index('ix_leases_sandbox_live', table_name='leases', postgresql_where=sa.text('consumed_at IS NULL'))
    op.drop_table('leases')
    op.drop_table('invoice_number_sequences')
