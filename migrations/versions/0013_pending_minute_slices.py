"""pending samples partitioned by minute, so a folded minute leaves whole

`host_stats_pending` becomes a table partitioned by `time` with a default partition; the
service makes a slice per minute ahead of need (`metering.ingest.slices`) and the fold drops
each one after moving it. The key becomes (source, id, time), as a partition key requires: a
retry carries the same time, so it is still a duplicate. The rows move once, into the
default partition, and are folded from there.

Revision ID: 0013
Revises: 0012
"""
from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

COLUMNS = "source, id, execution_id, time, cpu_centipct, memory_used_mib, tag"


def upgrade() -> None:
    op.execute("ALTER TABLE host_stats_pending RENAME TO host_stats_pending_unsliced")
    op.execute("ALTER INDEX pk_host_stats_pending RENAME TO pk_host_stats_pending_unsliced")
    op.execute("ALTER INDEX ix_host_stats_pending_execution_id "
               "RENAME TO ix_host_stats_pending_unsliced_execution_id")
    op.execute("""
        CREATE TABLE host_stats_pending (
            source varchar(1024) NOT NULL,
            id varchar(256) NOT NULL,
            execution_id varchar(256) NOT NULL,
            time timestamptz NOT NULL,
            cpu_centipct integer,
            memory_used_mib integer,
            tag bigint NOT NULL,
            CONSTRAINT pk_host_stats_pending PRIMARY KEY (source, id, time)
        ) PARTITION BY RANGE (time)
    """)
    op.execute("CREATE INDEX ix_host_stats_pending_execution_id "
               "ON host_stats_pending (execution_id, time)")
    op.execute("CREATE TABLE host_stats_pending_default PARTITION OF host_stats_pending DEFAULT")
    op.execute(f"INSERT INTO host_stats_pending ({COLUMNS}) "
               f"SELECT {COLUMNS} FROM host_stats_pending_unsliced")
    op.execute("DROP TABLE host_stats_pending_unsliced")


def downgrade() -> None:
    op.execute("ALTER TABLE host_stats_pending RENAME TO host_stats_pending_sliced")
    op.execute("ALTER INDEX pk_host_stats_pending RENAME TO pk_host_stats_pending_sliced")
    op.execute("ALTER INDEX ix_host_stats_pending_execution_id "
               "RENAME TO ix_host_stats_pending_sliced_execution_id")
    op.execute("""
        CREATE TABLE host_stats_pending (
            source varchar(1024) NOT NULL,
            id varchar(256) NOT NULL,
            execution_id varchar(256) NOT NULL,
            time timestamptz NOT NULL,
            cpu_centipct integer,
            memory_used_mib integer,
            tag bigint NOT NULL,
            CONSTRAINT pk_host_stats_pending PRIMARY KEY (source, id)
        )
    """)
    op.execute("CREATE INDEX ix_host_stats_pending_execution_id "
               "ON host_stats_pending (execution_id, time)")
    # The key narrows back to (source, id): of samples reusing one with another time, the
    # first is kept (they would have been refused before the upgrade).
    op.execute(f"INSERT INTO host_stats_pending ({COLUMNS}) "
               f"SELECT {COLUMNS} FROM host_stats_pending_sliced ON CONFLICT DO NOTHING")
    op.execute("DROP TABLE host_stats_pending_sliced")
