"""Event batches parsed, validated and stored in helper processes (`ingest_helpers`): the
orchestrator gets the same answers, in every CloudEvents mode and for every refusal, as when
the API process does it in its threads; a helper that dies is replaced without losing or
doubling a batch; and database failures answer as the API's own errors."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from billing.app import create_app
from metering.api import throttle
from metering.api.errors import api_error
from metering.config import Settings
from metering.db import make_engine, make_sessionmaker, pipeline, run_transaction, transaction
from metering.errors import BadRequest, Conflict, ReadCancelled, StorageUnavailable
from metering.ingest.endpoints import IngestHelpers
from tests.conftest import Keys, event
from tests.metering.test_bulkheads import new_key

START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_app(database_url: str, **options: object) -> FastAPI:
    settings = Settings(database_url=None, run_scheduler=False, **options)  # type: ignore[arg-type]
    return create_app(settings, database_url=database_url, migrate_on_start=False)


@pytest.fixture
def apps(database_url: str) -> Iterator[tuple[FastAPI, FastAPI]]:
    """The same service twice: batches stored in the API process's threads, and in two
    ingest helpers at nice +3."""
    throttle.forget_all()
    threads = make_app(database_url, ingest_helpers=0, max_batch_events=5)
    in_helpers = make_app(database_url, ingest_helpers=2, ingest_helper_nice=3,
                          max_batch_events=5)
    yield threads, in_helpers
    for app in (threads, in_helpers):
        app.state.engine.dispose()
        app.state.read_engine.dispose()
    throttle.forget_all()


def requests(team: str) -> list[dict[str, Any]]:
    """One of each thing the orchestrator may send, good and bad, for `team`."""
    execution = f"exe_{team}"
    created = event("created", team=team, execution=execution, time=iso(START), vcpu=2,
                    memory_mib=1024)
    stats = event("host_stats", team=team, execution=execution,
                  time=iso(START + timedelta(seconds=1)), cpu_pct=12.5, memory_used_mib=300)
    bad = event("created", team=team, execution=execution, time=iso(START), vcpu=0,
                memory_mib=1024, id=f"{team}-bad")
    killed = event("killed", team=team, execution=execution,
                   time=iso(START + timedelta(seconds=90)))
    clash = {**killed, "data": {**killed["data"], "execution_id": f"exe_other_{team}"}}
    binary_headers = {
        "ce-specversion": "1.0", "ce-id": f"{team}-binary", "ce-source": "orchestrator/test",
        "ce-type": "sandbox.host_stats", "ce-subject": "sbx_1",
        "ce-time": iso(START + timedelta(seconds=2)), "content-type": "application/json"}
    return [
        {"json": [created, stats, bad, created]},  # accepted, accepted, refused, duplicate
        {"content": orjson_bytes(killed),
         "headers": {"content-type": "application/cloudevents+json"}},
        {"content": orjson_bytes(clash),  # same (source, id), other content: 409
         "headers": {"content-type": "application/cloudevents+json"}},
        {"content": orjson_bytes({"team_id": team, "execution_id": execution,
                                  "cpu_pct": 3.0, "memory_used_mib": 10}),
         "headers": binary_headers},
        {"content": orjson_bytes(bad), "headers": {"content-type": "application/cloudevents+json"}},
        {"json": [stats] * 6},  # over max_batch_events: 413
        {"content": b"[{", "headers": {"content-type": "application/json"}},  # not JSON: 400
        {"json": {"not": "a batch"}},  # neither a batch nor an event: 400
    ]


def orjson_bytes(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


def answers(client: TestClient, key: str, team: str) -> list[tuple[int, Any]]:
    out = []
    for request in requests(team):
        headers = {**Keys.auth(key), **request.pop("headers", {})}
        response = client.post("/v1/events", headers=headers, **request)
        out.append((response.status_code, response.json()))
    return out


def same_shape(found: list[tuple[int, Any]], team: str) -> list[tuple[int, Any]]:
    """Answers with the team's name taken out (each app gets a team of its own)."""
    import orjson

    return [(status, orjson.loads(orjson.dumps(body).replace(team.encode(), b"T")))
            for status, body in found]


def scheduling_group(pid: int) -> str | None:
    """A process's session group and its nice where the kernel has them (autogroup):
    "nice N", or None."""
    try:
        with open(f"/proc/{pid}/autogroup") as group:
            return " ".join(group.read().split()[-2:])
    except OSError:
        return None


def test_batches_in_helpers_get_the_same_answers_as_in_threads(
    apps: tuple[FastAPI, FastAPI], sessions: sessionmaker[Session],
) -> None:
    threads, in_helpers = apps
    _, ingest = new_key(sessions, "ingest")
    with TestClient(threads) as client:
        expected = answers(client, ingest, "team_threads")
    with TestClient(in_helpers) as client:
        found = answers(client, ingest, "team_helpers")
        bad_key = client.post("/v1/events", json=[], headers=Keys.auth("sk_unknown"))
        _, team_key = new_key(sessions, "team", "team_helpers")
        wrong_role = client.post("/v1/events", json=[], headers=Keys.auth(team_key))
        pids = in_helpers.state.ingest_helpers.pids()
        # A helper spawned for this app may still be importing (before its start lowers its
        # priority) when the answers come from the other one.
        wanted = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
                os.getpriority(os.PRIO_PROCESS, pid) != wanted or os.getsid(pid) != pid
                or scheduling_group(pid) not in (None, f"nice {wanted}") for pid in pids):
            time.sleep(0.1)
        niceness = {os.getpriority(os.PRIO_PROCESS, pid) for pid in pids}
        sessions_of = {pid: os.getsid(pid) for pid in pids}
        groups = {pid: scheduling_group(pid) for pid in pids}
    assert [status for status, _ in found] == [200, 200, 409, 200, 400, 413, 400, 400]
    assert found[0][1]["accepted"] == 2 and found[0][1]["duplicates"] == 1
    assert found[0][1]["errors"][0]["index"] == 2
    assert same_shape(found, "team_helpers") == same_shape(expected, "team_threads")
    assert bad_key.status_code == 401 and bad_key.json()["error"]["code"] == "unauthorized"
    assert wrong_role.status_code == 403 and wrong_role.json()["error"]["code"] == "forbidden"
    # Stored by the helpers (other processes, at their own priority), and the same as stored
    # by the threads: 90 s of 2 vCPU and 1 GiB each.
    assert pids and os.getpid() not in pids
    assert niceness == {wanted}
    # Each in a session, so a scheduling group, of its own at that nice: ranked below the API
    # process by the kernel even where it shares CPU between sessions first.
    assert sessions_of == {pid: pid for pid in pids}
    if any(group is not None for group in groups.values()):
        assert {group for group in groups.values()} == {f"nice {niceness.pop()}"}
    with transaction(sessions) as session:
        stored = dict(session.execute(text(
            "SELECT team_id, count(*) FROM lifecycle_events GROUP BY 1")).all())
    assert stored == {"team_threads": 2, "team_helpers": 2}  # created and killed


def test_a_helper_that_dies_is_replaced_and_no_batch_is_lost_or_doubled(
    apps: tuple[FastAPI, FastAPI], sessions: sessionmaker[Session],
) -> None:
    _, in_helpers = apps
    _, ingest = new_key(sessions, "ingest")
    batches = [[event("created", team="team_k", execution=f"exe_{b}_{i}", time=iso(START),
                      vcpu=1, memory_mib=512) for i in range(5)] for b in range(6)]
    with TestClient(in_helpers) as client:
        first = client.post("/v1/events", json=batches[0], headers=Keys.auth(ingest))
        assert first.json()["accepted"] == 5
        killed = in_helpers.state.ingest_helpers.pids()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        for batch in batches[1:]:
            again = client.post("/v1/events", json=batch, headers=Keys.auth(ingest))
            assert again.status_code == 200, again.text
            assert again.json()["accepted"] + again.json()["duplicates"] == 5
        replacements = in_helpers.state.ingest_helpers.pids()
    assert replacements and not set(replacements) & set(killed)
    with transaction(sessions) as session:
        count = session.execute(text(
            "SELECT count(*) FROM lifecycle_events WHERE team_id = 'team_k'")).scalar_one()
    assert count == 30


def drop_connections(engine: Engine, where: str, params: dict[str, Any] | None = None) -> int:
    """Have the database terminate the client connections `where` selects (a condition on
    `pg_stat_activity`) and wait until they are gone; answers how many it terminated."""
    others = f"FROM pg_stat_activity WHERE backend_type = 'client backend' AND {where}"
    with engine.connect() as conn:
        dropped = conn.execute(text(f"SELECT count(pg_terminate_backend(pid)) {others}"),
                               params or {}).scalar_one()
        conn.commit()
        deadline = time.monotonic() + 10
        while conn.execute(text(f"SELECT count(*) {others}"), params or {}).scalar_one():
            conn.commit()  # the activity view is read once per transaction
            assert time.monotonic() < deadline, "connections not dropped"
            time.sleep(0.05)
    return int(dropped)


def test_a_batch_whose_connection_the_database_dropped_is_stored_on_a_new_one(
    database_url: str, engine: Engine, sessions: sessionmaker[Session],
) -> None:
    """When the database has dropped a helper's connection (a restart, a failover, an idle
    timeout), the next batch is stored on a new one: the orchestrator never sees the drop."""
    throttle.forget_all()
    app = make_app(database_url, ingest_helpers=1, ingest_helper_nice=0)
    _, ingest = new_key(sessions, "ingest")
    batches = [[event("created", team="team_d", execution=f"exe_d_{b}_{i}", time=iso(START),
                      vcpu=1, memory_mib=512) for i in range(5)] for b in range(3)]
    try:
        with TestClient(app) as client:
            first = client.post("/v1/events", json=batches[0], headers=Keys.auth(ingest))
            assert first.json()["accepted"] == 5
            dropped = drop_connections(
                engine, "datname = current_database() AND pid <> pg_backend_pid()")
            assert dropped >= 1  # the helper's connection among them
            engine.dispose()  # this test's own pooled connections went with them
            for batch in batches[1:]:
                again = client.post("/v1/events", json=batch, headers=Keys.auth(ingest))
                assert again.status_code == 200, again.text
                assert again.json()["accepted"] == 5
    finally:
        app.state.engine.dispose()
        app.state.read_engine.dispose()
        throttle.forget_all()
    with transaction(sessions) as session:
        count = session.execute(text(
            "SELECT count(*) FROM lifecycle_events WHERE team_id = 'team_d'")).scalar_one()
    assert count == 15


def test_a_unit_of_work_that_lost_its_connection_runs_again_on_a_new_one(
    database_url: str, engine: Engine,
) -> None:
    """`run_transaction` (ingest's unit of work) on a pool that does not ping: a connection
    the database dropped fails the attempt, and the next attempt takes a new one."""
    unpinged = make_engine(database_url, pool_size=1, pre_ping=False)
    factory = make_sessionmaker(unpinged)

    def backend(session: Session) -> int:
        return int(pipeline(session, [("SELECT pg_backend_pid()", {})])[0][0][0])

    def drop(pid: int) -> None:
        drop_connections(engine, "pid = :pid", {"pid": pid})

    try:
        first = run_transaction(factory, backend)
        drop(first)
        with pytest.raises(DBAPIError) as lost:
            run_transaction(factory, backend, attempts=1)
        assert lost.value.connection_invalidated
        second = run_transaction(factory, backend)
        drop(second)
        assert run_transaction(factory, backend, attempts=2) not in (first, second)
    finally:
        unpinged.dispose()


def test_a_batch_sent_over_http_is_stored_by_a_helper(
    apps: tuple[FastAPI, FastAPI], sessions: sessionmaker[Session],
) -> None:
    """Through a real HTTP client (bodies streamed in chunks), as the orchestrator sends."""
    _, in_helpers = apps
    _, ingest = new_key(sessions, "ingest")
    batch = [event("host_stats", team="team_h", execution="exe_h",
                   time=iso(START + timedelta(seconds=i)), cpu_pct=1.0, memory_used_mib=1)
             for i in range(5)]
    transport = httpx.ASGITransport(app=in_helpers)

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/events", json=batch, headers=Keys.auth(ingest))

    with TestClient(in_helpers):  # runs the app's start-up and shut-down
        response = asyncio.run(send())
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 5, "duplicates": 0, "rejected": 0, "errors": []}


def database_error(database_url: str, statement: str, timeout_ms: int | None = None
                   ) -> DBAPIError:
    engine = make_engine(database_url, pool_size=1, statement_timeout_ms=timeout_ms)
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    except DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{statement} did not fail")


def test_database_failures_in_a_helper_answer_as_the_api_does(database_url: str) -> None:
    cancelled = api_error(database_error(database_url, "SELECT pg_sleep(1)", 50))
    assert isinstance(cancelled, ReadCancelled) and cancelled.retry_after_s == 5
    unstorable = api_error(database_error(database_url, "SELECT int4 '3000000000'"))
    assert isinstance(unstorable, BadRequest)
    assert "out of range" in unstorable.message
    from urllib.parse import urlsplit, urlunsplit

    nowhere = urlunsplit(urlsplit(database_url)._replace(netloc="postgres@127.0.0.1:9"))
    down = api_error(database_error(nowhere, "SELECT 1"))
    assert isinstance(down, StorageUnavailable) and down.retry_after_s == 1
    # Each crosses the process boundary whole.
    import pickle

    for error in (cancelled, unstorable, down, Conflict("taken", resource="key_1")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.body() == error.body()


def test_the_api_process_answers_database_failures_the_same_way(database_url: str) -> None:
    """A statement past its time limit in the API process's own thread: `503 overloaded`
    with `Retry-After: 5`, as from a helper (psycopg raises it as an operational error)."""
    app = make_app(database_url)
    engine = make_engine(database_url, pool_size=1, statement_timeout_ms=50)

    @app.get("/test/slow")
    def slow() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(1)"))

    try:
        with TestClient(app) as client:
            response = client.get("/test/slow")
    finally:
        engine.dispose()
        app.state.engine.dispose()
        app.state.read_engine.dispose()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"
    assert response.headers["Retry-After"] == "5"


def test_ingest_helpers_are_stopped_with_the_app(database_url: str) -> None:
    app = make_app(database_url, ingest_helpers=1)
    ingest: IngestHelpers = app.state.ingest_helpers
    with TestClient(app):
        ingest.start()
        pids = ingest.pids()
        assert len(pids) == 1
    assert ingest.pids() == []
    app.state.engine.dispose()
    app.state.read_engine.dispose()


def test_the_service_is_ready_once_its_helpers_have_started(
    database_url: str, engine: Engine,
) -> None:
    """Until a helper has imported and set itself up, a batch would wait for it (about a
    second) and a Ctrl-C would interrupt its imports: `/readyz` answers 503 until then."""
    app = make_app(database_url, ingest_helpers=1)
    ingest: IngestHelpers = app.state.ingest_helpers
    with TestClient(app) as client:
        ingest.start()
        starting = client.get("/readyz")
        assert starting.status_code == 503
        assert "ingest helpers starting" in starting.json()["error"]["message"]
        deadline = time.monotonic() + 60
        while not ingest.started() and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
    app.state.engine.dispose()
    app.state.read_engine.dispose()
