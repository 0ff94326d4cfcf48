"""The schema comes only from Alembic: up from empty, down to base, up again, and the models
never drift from the migrations."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from billing.models import metadata
from metering import migrate
from metering.db import make_engine
from metering.ingest import partitions as retention


def test_upgrade_downgrade_upgrade_and_no_drift(database_url: str) -> None:
    import psycopg

    from tests.conftest import SERVER_URL, _database_url

    name = "metering_migrations_" + database_url.rsplit("/", 1)[-1].split("?", maxsplit=1)[0][-24:]
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(_database_url(name), pool_size=1)
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True, "include_name": retention.include_name})
            diff = compare_metadata(context, metadata)
        assert diff == [], f"models and migrations drift: {diff}"
        migrate.downgrade(engine, "base")
        tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
        assert tables == set()
        migrate.upgrade(engine)
        assert set(inspect(engine).get_table_names()) >= {"executions", "lifecycle_events"}
    finally:
        engine.dispose()
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_team_collection_methods_move_to_billing_and_back_intact(database_url: str) -> None:
    import psycopg
    from sqlalchemy import text

    from tests.conftest import SERVER_URL, _database_url

    name = "metering_settings_" + database_url.rsplit("/", 1)[-1].split("?", maxsplit=1)[0][-24:]
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(_database_url(name), pool_size=1)
    try:
        migrate.upgrade(engine, "0011")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO teams (id, collection_method) VALUES "
                              "('team_sent', 'send_invoice'), ('team_charged', DEFAULT)"))
        migrate.upgrade(engine, "0012")
        with engine.connect() as conn:
            moved = conn.execute(text(
                "SELECT team_id, collection_method FROM team_billing_settings ORDER BY 1")).all()
            assert "collection_method" not in {
                c["name"] for c in inspect(conn).get_columns("teams")}
        assert [tuple(r) for r in moved] == [("team_charged", "charge_automatically"),
                                            ("team_sent", "send_invoice")]
        migrate.downgrade(engine, "0011")
        with engine.connect() as conn:
            back = conn.execute(text(
                "SELECT id, collection_method FROM teams ORDER BY 1")).all()
        assert [tuple(r) for r in back] == [("team_charged", "charge_automatically"),
                                           ("team_sent", "send_invoice")]
    finally:
        engine.dispose()
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
