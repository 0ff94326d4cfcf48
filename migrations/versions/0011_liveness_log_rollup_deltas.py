"""liveness from a per-batch log, rollups from append-only deltas, pending samples by execution

- `liveness_log`: each ingest batch appends one row, its executions' newest sample times;
  the liveness pass drains it (cost in proportion to what arrived, not to what is pending).
  Seeded from the pending samples, so nothing already ingested loses its liveness.
- `usage_rollup_deltas`: settled usage changes are appended here by the transaction that
  makes them (no row shared by concurrent batches); a job folds them into `usage_rollups`,
  and reads add what is not folded yet, so figures stay exact.
- `host_stats_pending (execution_id, time)`: a sandbox's metrics read its pending samples
  through an index instead of scanning them all.
- `executions` fillfactor 80: the liveness pass's `last_event_at` updates stay on the page
  (HOT, no index writes).

Revision ID: 0011
Revises: 0010
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "liveness_log",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("carried", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("execution_ids", postgresql.ARRAY(sa.String()), nullable=False),
        sa.Column("newest", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_liveness_log")),
    )
    op.execute("""
        INSERT INTO liveness_log (execution_ids, newest)
        SELECT array_agg(execution_id), array_agg(newest)
        FROM (SELECT execution_id, max(time) AS newest FROM host_stats_pending
              GROUP BY execution_id) p
        HAVING count(*) > 0
    """)
    op.create_table(
        "usage_rollup_deltas",
        sa.Column("team_id", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vcpu_ms", sa.BigInteger(), nullable=False),
        sa.Column("mib_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_usage_rollup_deltas_team_id", "usage_rollup_deltas", ["team_id", "hour"])
    op.create_index("ix_host_stats_pending_execution_id", "host_stats_pending",
                    ["execution_id", "time"])
    op.execute("ALTER TABLE executions SET (fillfactor = 80)")


def downgrade() -> None:
    op.execute("ALTER TABLE executions RESET (fillfactor)")
    op.drop_index("ix_host_stats_pending_execution_id", table_name="host_stats_pending")
    # Deltas not folded yet are usage: fold them before the table goes.
    op.execute("""
        INSERT INTO usage_rollups AS r (team_id, hour, vcpu_ms, mib_ms)
        SELECT team_id, hour, sum(vcpu_ms), sum(mib_ms) FROM usage_rollup_deltas
        GROUP BY team_id, hour
        ON CONFLICT (team_id, hour) DO UPDATE SET
            vcpu_ms = r.vcpu_ms + excluded.vcpu_ms, mib_ms = r.mib_ms + excluded.mib_ms
    """)
    op.drop_index("ix_usage_rollup_deltas_team_id", table_name="usage_rollup_deltas")
    op.drop_table("usage_rollup_deltas")
    op.drop_table("liveness_log")
