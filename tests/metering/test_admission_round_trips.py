"""How many times an admission waits for the database, on both of its paths (the event loop's
and the threaded one): it is on the orchestrator's start path, and under load each wait is a
wait for a core. Counted from the wire like an event batch's (`test_ingest_round_trips`)."""

from __future__ import annotations

import asyncio
import functools
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from metering import db_async, known
from metering.admissions import service
from metering.config import Settings
from metering.core.admission import AdmissionRequest
from metering.db import transaction
from tests.conftest import Keys
from tests.metering.test_ingest_round_trips import Wire, traced  # noqa: F401 (a fixture)

REQUEST = AdmissionRequest(vcpu=2, memory_mib=1024)


def pro_team(client: TestClient, keys: Keys, team: str) -> None:
    """A Pro team without a spend limit: billing decides from the prefetched row alone, so
    its admissions are answered on the event loop."""
    assert client.put(f"/v1/teams/{team}", json={"name": team, "plan": "pro"},
                      headers=Keys.auth(keys.finance)).status_code == 200


@pytest.fixture
def wire() -> Iterator[Wire]:
    with tempfile.TemporaryFile() as file:
        yield Wire(file)


def test_a_threaded_admission_waits_for_the_database_twice(
    traced: tuple[sessionmaker[Session], Wire], client: TestClient, api_keys: Keys,  # noqa: F811
    settings: Settings,
) -> None:
    sessions, wire = traced
    pro_team(client, api_keys, "team_rt")
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        service.admit(session, settings, api_keys.ingest, "team_rt", "sbx_warm", REQUEST, now)
    wire.round_trips()

    with transaction(sessions) as session:
        decision = service.admit(session, settings, api_keys.ingest, "team_rt", "sbx_1",
                                 REQUEST, now)
    assert decision.status == 200 and decision.body["admitted"] is True
    # The BEGIN with the key, the team's lock, the live lease, the counts and billing's
    # read; then (the last exchange, not counted: its answer is not in the trace yet when
    # the test reads it) the lease with the COMMIT.
    assert wire.round_trips() == 1


def test_an_admission_on_the_event_loop_waits_for_the_database_twice(
    engine: Engine, client: TestClient, api_keys: Keys, settings: Settings, wire: Wire,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pro_team(client, api_keys, "team_rt")
    known.teams.remember(["team_rt"])

    async def attach(conn: psycopg.AsyncConnection[Any]) -> None:
        wire.attach(conn, None)

    monkeypatch.setattr(db_async, "AsyncConnectionPool",
                        functools.partial(AsyncConnectionPool, configure=attach))

    async def admissions() -> list[int]:
        state = type("State", (), {})()
        await db_async.open_pool(state, engine, 1)
        pool = db_async.pool_for_loop(state)
        assert pool is not None
        await pool.wait()
        counted = []
        try:
            for sandbox in ("sbx_warm", "sbx_1", "sbx_2"):
                wire.round_trips()
                decision = await service.admit_on_loop(
                    pool, settings, api_keys.ingest, "team_rt", sandbox, REQUEST,
                    datetime.now(UTC))
                assert decision is not None and decision.status == 200
                counted.append(wire.round_trips())
        finally:
            await db_async.close_pool(state)
        return counted

    # Each: the BEGIN with the prefetch's reads; then (not counted, as above) the lease
    # with the COMMIT.
    assert asyncio.run(admissions())[1:] == [1, 1]
