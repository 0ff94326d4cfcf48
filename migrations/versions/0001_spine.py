"""spine: keys, teams, events, executions, samples

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 15:48:08.305891
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=24), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("role <> 'team' OR team_id IS NOT NULL", name=op.f('ck_api_keys_team_key_has_team')),
    sa.CheckConstraint("role IN ('ingest', 'team', 'finance', 'admin')", name=op.f('ck_api_keys_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('digest', name=op.f('uq_api_keys_digest'))
    )
    op.create_table('execution_segments',
    sa.Column('execution_id', sa.String(length=256), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('vcpu', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('execution_id', 'seq', name=op.f('pk_execution_segments'))
    )
    op.create_index('ix_execution_segments_team_end', 'execution_segments', ['team_id', 'end_at'], unique=False)
    op.create_index('ix_execution_segments_team_start', 'execution_segments', ['team_id', 'start_at'], unique=False)
    op.create_table('executions',
    sa.Column('execution_id', sa.String(length=256), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('sandbox_id', sa.String(length=256), nullable=False),
    sa.Column('template_id', sa.String(length=256), nullable=True),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('start_kind', sa.String(length=16), nullable=True),
    sa.Column('vcpu', sa.Integer(), nullable=True),
    sa.Column('memory_mib', sa.Integer(), nullable=True),
    sa.Column('disk_mib', sa.Integer(), nullable=True),
    sa.Column('end_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_kind', sa.String(length=16), nullable=True),
    sa.Column('end_reason', sa.String(length=32), nullable=True),
    sa.Column('last_event_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('execution_id', name=op.f('pk_executions'))
    )
    op.create_index('ix_executions_open', 'executions', ['team_id'], unique=False, postgresql_where=sa.text('end_at IS NULL'))
    op.create_index('ix_executions_sandbox', 'executions', ['sandbox_id'], unique=False)
    op.create_index('ix_executions_team_start', 'executions', ['team_id', 'start_at'], unique=False)
    op.create_table('host_stats_pending',
    sa.Column('source', sa.String(length=1024), nullable=False),
    sa.Column('id', sa.String(length=256), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('sandbox_id', sa.String(length=256), nullable=False),
    sa.Column('execution_id', sa.String(length=256), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cpu_centipct', sa.Integer(), nullable=True),
    sa.Column('memory_used_mib', sa.Integer(), nullable=True),
    sa.Column('tag', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('source', 'id', name=op.f('pk_host_stats_pending'))
    )
    # A queue-like table: rows live minutes, so vacuum it eagerly to keep it small.
    op.execute("ALTER TABLE host_stats_pending SET (autovacuum_vacuum_scale_factor = 0.02, "
               "autovacuum_vacuum_insert_scale_factor = 0.05)")
    op.create_table('lifecycle_events',
    sa.Column('source', sa.String(length=1024), nullable=False),
    sa.Column('id', sa.String(length=256), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('execution_id', sa.String(length=256), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('digest', sa.LargeBinary(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('source', 'id', name=op.f('pk_lifecycle_events'))
    )
    op.create_index('ix_lifecycle_events_execution', 'lifecycle_events', ['execution_id'], unique=False)
    op.create_table('sample_minutes',
    sa.Column('execution_id', sa.String(length=256), nullable=False),
    sa.Column('minute', sa.DateTime(timezone=True), nullable=False),
    sa.Column('team_id', sa.String(length=128), nullable=False),
    sa.Column('sandbox_id', sa.String(length=256), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('cpu_samples', sa.Integer(), nullable=False),
    sa.Column('cpu_sum', sa.BigInteger(), nullable=False),
    sa.Column('cpu_max', sa.Integer(), nullable=True),
    sa.Column('mem_samples', sa.Integer(), nullable=False),
    sa.Column('mem_sum', sa.BigInteger(), nullable=False),
    sa.Column('mem_max', sa.Integer(), nullable=True),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tags', postgresql.ARRAY(sa.BigInteger()), nullable=False),
    sa.PrimaryKeyConstraint('execution_id', 'minute', name=op.f('pk_sample_minutes'))
    )
    op.create_table('teams',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('auto_created', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('blocked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('blocked_reason', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_teams'))
    )


def downgrade() -> None:
    op.drop_table('teams')
    op.drop_table('sample_minutes')
    op.drop_index('ix_lifecycle_events_execution', table_name='lifecycle_events')
    op.drop_table('lifecycle_events')
    op.drop_table('host_stats_pending')
    op.drop_index('ix_executions_team_start', table_name='executions')
    op.drop_index('ix_executions_sandbox', table_name='executions')
    op.drop_index('ix_executions_open', table_name='executions', postgresql_where=sa.text('end_at IS NULL'))
    op.drop_table('executions')
    op.drop_index('ix_execution_segments_team_start', table_name='execution_segments')
    op.drop_index('ix_execution_segments_team_end', table_name='execution_segments')
    op.drop_table('execution_segments')
    op.drop_table('api_keys')
