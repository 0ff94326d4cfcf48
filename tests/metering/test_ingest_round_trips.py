"""How many times an event batch waits for the database: each wait is a wake-up of the
process storing it and of its database backend, and under load each costs a wait for a core.
Counted from the wire (libpq's protocol trace: messages out, then answers back, per round trip), on the
real path of `POST /v1/events` (key, validation, store, commit)."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import IO, Any

import psycopg
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from metering import known
from metering.api.helpers import helper_engine
from metering.config import Settings
from metering.db import (
    driver,
    driver_sql,
    make_engine,
    make_sessionmaker,
    pipeline,
    pipelined,
    run_transaction,
)
from metering.ingest.endpoints import INGEST_POOL, _ingest
from tests.conftest import Keys, event


class Wire:
    """The protocol trace of every connection of one engine."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def attach(self, dbapi_connection: Any, _record: Any) -> None:
        pgconn = dbapi_connection.pgconn
        pgconn.trace(self.file.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def round_trips(self) -> int:
        """Round trips since the last call: each run of messages to the server followed by
        one of answers (a pipeline's statements go out together, then its answers come)."""
        self.file.seek(0)
        lines = self.file.read().decode(errors="replace").splitlines()
        self.file.seek(0)
        self.file.truncate()
        directions = [line[:1] for line in lines if line[:1] in ("F", "B")]
        return sum(1 for pair in pairwise(directions) if pair == ("F", "B"))


@pytest.fixture
def traced(database_url: str) -> Iterator[tuple[sessionmaker[Session], Wire]]:
    # The engine an ingest helper stores its batches with (its pool's checkout included).
    engine: Engine = helper_engine(database_url, INGEST_POOL)
    with tempfile.TemporaryFile() as file:
        wire = Wire(file)
        sa_event.listen(engine, "connect", wire.attach)
        with engine.connect() as conn:  # the connection made (and traced) outside the count
            conn.execute(text("SELECT 1"))
            conn.commit()
        try:
            yield make_sessionmaker(engine), wire
        finally:
            engine.dispose()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def samples(second: datetime, executions: int, team: str | None = None) -> list[dict[str, Any]]:
    return [event("host_stats", execution=f"exe_{i}", sandbox=f"sbx_{i}",
                  team=team or f"team_{i % 5}",
                  time=iso(second), cpu_pct=10, memory_used_mib=300)
            for i in range(executions)]


def test_a_batch_of_samples_waits_for_the_database_three_times(
    traced: tuple[sessionmaker[Session], Wire], settings: Settings, api_keys: Keys,
) -> None:
    sessions, wire = traced
    now = datetime.now(UTC).replace(microsecond=0)
    first = [event("created", execution=f"exe_{i}", sandbox=f"sbx_{i}", team=f"team_{i % 5}",
                   time=iso(now - timedelta(seconds=5)), vcpu=2, memory_mib=1024)
             for i in range(200)]
    assert _ingest(settings, sessions, api_keys.ingest, first + samples(now, 200))[
        "accepted"] == 400
    wire.round_trips()

    # The steady state: running executions' samples, every execution and team known.
    answer = _ingest(settings, sessions, api_keys.ingest,
                     samples(now + timedelta(seconds=1), 200))
    assert answer["accepted"] == 200
    # The key, with the transaction's BEGIN; the samples with their liveness row. The last
    # exchange, the COMMIT, is not counted: its answer is not in the trace yet when the test
    # reads it (nor is any batch's last, below).
    assert wire.round_trips() == 2

    # A process that knows nothing yet asks about the executions once more.
    known.forget_all()
    answer = _ingest(settings, sessions, api_keys.ingest,
                     samples(now + timedelta(seconds=2), 200))
    assert answer["accepted"] == 200
    # + the teams; the executions' owners (ensure and read) go with the samples.
    assert wire.round_trips() == 3


def test_a_batch_with_lifecycle_events_waits_for_the_database_three_times(
    traced: tuple[sessionmaker[Session], Wire], settings: Settings, api_keys: Keys,
) -> None:
    sessions, wire = traced
    now = datetime.now(UTC).replace(microsecond=0)
    created = [event("created", execution=f"exe_{i}", sandbox=f"sbx_{i}", team="team_1",
                     time=iso(now - timedelta(seconds=5)), vcpu=2, memory_mib=1024)
               for i in range(10)]
    assert _ingest(settings, sessions, api_keys.ingest, created)["accepted"] == 10
    wire.round_trips()

    # Five sandboxes replaced, as a fleet's batch carries them: killed, and new ones created.
    churn = [event("killed", execution=f"exe_{i}", sandbox=f"sbx_{i}", team="team_1",
                   time=iso(now), reason="request") for i in range(5)] + [
             event("created", execution=f"exe_{i}", sandbox=f"sbx_{i}", team="team_1",
                   time=iso(now), vcpu=2, memory_mib=1024) for i in range(10, 15)]
    batch = churn + samples(now, 10, "team_1")
    answer = _ingest(settings, sessions, api_keys.ingest, batch)
    assert answer == {"accepted": 20, "duplicates": 0, "rejected": 0, "errors": []}
    # The key, with the BEGIN; the samples with the new executions' owners, the lifecycle
    # events (and the leases they consume) and the executions locked with their events
    # read; then (the last exchange, not counted) the executions and segments written with
    # the COMMIT as the pipeline's last statement.
    assert wire.round_trips() == 2

    # The same batch again: every event a duplicate, found by the exact paths.
    again = _ingest(settings, sessions, api_keys.ingest, batch)
    assert again == {"accepted": 0, "duplicates": 20, "rejected": 0, "errors": []}


def test_batches_holding_stored_samples_keep_being_answered_on_one_connection(
    traced: tuple[sessionmaker[Session], Wire], settings: Settings, api_keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stored sample aborts the batch's pipeline (the exact path follows). Statements of
    an aborted pipeline must not be left half-prepared on the connection: every later batch
    on it is answered, across the number of uses after which psycopg prepares a statement."""
    sessions, _ = traced
    caplog.set_level(logging.INFO, logger="metering.db")
    now = datetime.now(UTC).replace(microsecond=0)
    before: list[dict[str, Any]] = []
    for i in range(12):
        fresh = samples(now + timedelta(seconds=i), 20)
        resent = before[:1] if i % 3 else []
        answer = _ingest(settings, sessions, api_keys.ingest, resent + fresh)
        assert answer == {"accepted": 20, "duplicates": len(resent), "rejected": 0,
                          "errors": []}
        before = fresh
    # Answered the first time: no batch had to run again for a statement the connection
    # believed prepared and the server did not have.
    assert [r.getMessage() for r in caplog.records if "run again" in r.getMessage()] == []


def test_a_batch_s_statements_are_parsed_and_planned_once_per_connection(
    traced: tuple[sessionmaker[Session], Wire], settings: Settings, api_keys: Keys,
) -> None:
    """The statements pipelined for a batch (samples, new executions, lifecycle) are
    prepared on the server after a few uses; transaction control never is."""
    sessions, _ = traced
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(8):
        second = now - timedelta(seconds=20 - i)
        churn = [event("created", execution=f"exe_{i}_{j}", sandbox=f"sbx_{i}_{j}",
                       team="team_1", time=iso(second), vcpu=2, memory_mib=1024)
                 for j in range(3)]
        answer = _ingest(settings, sessions, api_keys.ingest,
                         churn + samples(second, 10, "team_1"))
        assert answer["accepted"] == 13
    with sessions() as session:  # the pool's one connection, the one the batches used
        prepared = [" ".join(r[0].split()) for r in session.execute(
            text("SELECT statement FROM pg_prepared_statements"))]

    def has(start: str, end: str = "") -> bool:
        return any(statement.startswith(start) and statement.endswith(end)
                   for statement in prepared)
    assert has("WITH u AS MATERIALIZED")  # the samples with their liveness rows
    assert has("INSERT INTO executions")  # the new executions' claims
    assert has("SELECT execution_id, team_id FROM executions", "AS text[]))")  # their owners
    assert has("WITH seg AS MATERIALIZED")  # the rollup deltas of the recompute
    assert not any(statement.startswith(("SAVEPOINT", "RELEASE")) for statement in prepared)
    # What rides after the samples' insert, which may fail while the transaction goes on
    # (the lifecycle events, the recompute's lock), is never prepared.
    assert not has("WITH stored AS") and not has("SELECT execution_id, team_id", "FOR UPDATE")


def test_a_statement_the_driver_wrongly_believes_prepared_runs_again_and_answers(
    sessions: sessionmaker[Session], database_url: str,
) -> None:
    """The safety net under `prepare_in_pipeline`'s rule: were a statement skipped by an
    aborted pipeline still recorded as prepared, its next use fails once (SQLSTATE 26000)
    and the unit of work runs again after the rollback, which clears the record. The stale
    record is made the way psycopg 3.3 makes it; the first assertion says when it no longer
    does."""
    engine = make_engine(database_url, pool_size=1)
    factory = make_sessionmaker(engine)
    statement = text("SELECT count(*) FROM teams WHERE id > :after")

    def stale() -> None:
        with factory() as session, driver(session) as raw:
            for _ in range(2):  # a rollback to a savepoint psycopg has seen clears nothing
                raw.execute("SAVEPOINT s")
                raw.execute("ROLLBACK TO SAVEPOINT s")
            for _ in range(5):  # psycopg prepares a statement at its sixth use
                raw.execute(driver_sql(statement), {"after": ""}).fetchall()
            raw.execute("SAVEPOINT s")
            with pytest.raises(psycopg.errors.DivisionByZero), pipelined(raw):
                raw.execute("SELECT 1 / 0", prepare=False)
                raw.execute(driver_sql(statement), {"after": ""})  # queued, never parsed
            raw.execute("ROLLBACK TO SAVEPOINT s")
            raw.commit()

    def work(session: Session) -> int:
        return int(pipeline(session, [(statement, {"after": ""})])[0][0][0])

    try:
        stale()
        with pytest.raises(DBAPIError) as failed:
            run_transaction(factory, work, attempts=1)
        assert getattr(failed.value.orig, "sqlstate", None) == "26000"
        stale()
        expected = run_transaction(sessions, work)
        assert run_transaction(factory, work, attempts=2) == expected
    finally:
        engine.dispose()



def test_a_failure_arriving_while_a_pipeline_still_sends_is_raised_alone_and_not_logged(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture,
) -> None:
    """A resent batch's stored sample can fail the fast path's insert while the statements
    after it are still going out (under load the failure comes back early). That everyday
    event must raise its own error, on which the caller takes the exact path, and leave
    nothing in the logs, where psycopg would warn that the pipeline was aborted."""
    caplog.set_level(logging.DEBUG, logger="psycopg")
    with sessions() as session, driver(session) as raw:
        with pytest.raises(psycopg.errors.DivisionByZero), pipelined(raw):
            raw.execute("SELECT 1 / 0", prepare=False)
            raw.pgconn.send_flush_request()  # the server answers it now, not at the end
            raw.pgconn.flush()
            time.sleep(0.2)
            raw.execute("SELECT 2", prepare=False)  # finds the failure while being sent
        assert not raw.broken  # the transaction failed, the connection did not
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
