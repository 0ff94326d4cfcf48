"""Test fixtures: a real PostgreSQL database per test worker, built by the real migrations.

`METERING_TEST_DATABASE_URL` names the server (default: the local one on 127.0.0.1:5432);
each pytest-xdist worker gets its own database on it, created fresh at start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.app import create_app, wire_billing
from billing.plans.repository import forget_cache as forget_plan_cache
from metering import known, migrate
from metering.auth import service as keys
from metering.config import Settings
from metering.core import clock
from metering.db import make_engine, make_sessionmaker, transaction

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/test"

# The tests' in-process apps store event batches in their own threads: a test moves the clock
# in this process, which ingest helper processes would not see. The helpers' own tests ask
# for them, and the fault tests' real servers run with the default (see tests/faults).
INGEST_HELPERS_ENV = "METERING_INGEST_HELPERS"
INGEST_HELPERS_SET_HERE = INGEST_HELPERS_ENV not in os.environ
os.environ.setdefault(INGEST_HELPERS_ENV, "0")


def _server_url() -> str:
    """The PostgreSQL server tests create their databases on: the configured one, else the
    machine's on 127.0.0.1:5432, else an embedded server started for the run."""
    configured = os.environ.get("METERING_TEST_DATABASE_URL")
    if configured:
        return configured
    try:
        psycopg.connect(LOCAL_SERVER, connect_timeout=2).close()
        return LOCAL_SERVER
    except psycopg.OperationalError:
        from pathlib import Path

        from metering.db import start_embedded

        return start_embedded(Path(".metering-data/test-server"))


SERVER_URL = _server_url()


def _database_url(name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(SERVER_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def database_name(worker_id: str) -> str:
    return f"metering_test_{worker_id}_{os.getpid()}"


@pytest.fixture(scope="session")
def database_url(database_name: str) -> Iterator[str]:
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database_name}"')
    yield _database_url(database_name)
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


# Tables that hold configuration seeded by migrations survive between tests.
KEEP = {"alembic_version"}


@pytest.fixture(autouse=True)
def clean_database(request: pytest.FixtureRequest) -> Iterator[None]:
    clock.set_offset(timedelta(0))
    known.forget_all()
    wire_billing()
    forget_plan_cache()
    if "engine" not in request.fixturenames and "client" not in request.fixturenames:
        yield
        return
    engine: Engine = request.getfixturevalue("engine")
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
        wipe = [t for t in tables if t not in KEEP and t not in SEEDED]
        if wipe:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in wipe) + " CASCADE"))
        # Seeded plans stay; versions and plans a test added go.
        conn.execute(text("DELETE FROM plan_versions WHERE id NOT IN "
                          "('pv_hobby_1', 'pv_pro_1', 'pv_enterprise_1')"))
        conn.execute(text("DELETE FROM plans WHERE code NOT IN ('hobby', 'pro', 'enterprise')"))
    yield
    clock.set_offset(timedelta(0))


# Tables seeded by migrations (the default plans): cleaned row by row, not truncated.
SEEDED: set[str] = {"plans", "plan_versions"}


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(database_url=None, run_scheduler=False)


@pytest.fixture(scope="session")
def app(database_url: str, engine: Engine, settings: Settings) -> FastAPI:
    return create_app(settings, database_url=database_url, migrate_on_start=False)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@dataclass
class Keys:
    ingest: str
    finance: str
    admin: str

    def team(self, sessions: sessionmaker[Session], team_id: str) -> str:
        with transaction(sessions) as session:
            return keys.create_key(session, "team", team_id).key

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api_keys(sessions: sessionmaker[Session], client: TestClient) -> Keys:
    with transaction(sessions) as session:
        return Keys(
            ingest=keys.create_key(session, "ingest").key,
            finance=keys.create_key(session, "finance").key,
            admin=keys.create_key(session, "admin").key,
        )


def event(
    kind: str, *, sandbox: str = "sbx_1", execution: str = "exe_1", team: str = "team_1",
    time: str, id: str | None = None, source: str = "orchestrator/test", **data: Any,
) -> dict[str, Any]:
    """A CloudEvent as the orchestrator sends it."""
    event_type = "sandbox.host_stats" if kind == "host_stats" else f"sandbox.lifecycle.{kind}"
    return {
        "specversion": "1.0", "id": id or f"{execution}-{kind}-{time}", "source": source,
        "type": event_type, "subject": sandbox, "time": time,
        "data": {"team_id": team, "execution_id": execution, **data},
    }


@dataclass
class LiveServer:
    url: str


@pytest.fixture
def live_server(app: FastAPI, client: TestClient) -> Iterator[LiveServer]:
    """The test app served over real HTTP on 127.0.0.1 (for races and real clients)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Lifespan on: the server's loop gets its own admission pool, as in production.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield LiveServer(f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(5)
