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
