"""billing's team settings in billing's own table: Stripe's collection method

`teams.collection_method` (metering's table) moves to `team_billing_settings`, one row per team
that has billing settings; a team without a row is charged automatically. The upgrade copies
every team's method, the downgrade copies them back.

Revision ID: 0012
Revises: 0011
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "team_billing_settings",
        sa.Column("team_id", sa.String(length=128), nullable=False),
        sa.Column("collection_method", sa.String(length=32),
                  server_default=sa.text("'charge_automatically'"), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("team_id"),
    )
    op.execute("INSERT INTO team_billing_settings (team_id, collection_method) "
               "SELECT id, collection_method FROM teams")
    op.drop_column("teams", "collection_method")


def downgrade() -> None:
    op.add_column("teams", sa.Column("collection_method", sa.String(length=32),
                                     server_default=sa.text("'charge_automatically'"),
                                     nullable=False))
    op.execute("UPDATE teams t SET collection_method = s.collection_method "
               "FROM team_billing_settings s WHERE s.team_id = t.id")
    op.drop_table("team_billing_settings")
