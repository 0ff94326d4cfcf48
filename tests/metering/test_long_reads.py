"""Long series are built in helper processes at a lower CPU priority: the same answer as
built in the API process, a helper that dies is replaced, and a helper's read past its time
limit is `503 overloaded` like any read's."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing.app import create_app
from metering.api import throttle
from metering.api.long_reads import LongReads
from metering.config import Settings
from metering.errors import Overloaded
from tests.conftest import Keys, event
from tests.metering.test_bulkheads import new_key

DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
YEAR = {"start": (DAY - timedelta(days=300)).isoformat().replace("+00:00", "Z"),
        "end": (DAY + timedelta(days=65)).isoformat().replace("+00:00", "Z"),
        "granularity": "hour"}


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def helper_facts(session: Session, settings: Settings) -> tuple[int, int, int]:
    """Run in a helper: its pid, its niceness, and its database answering."""
    return os.getpid(), os.getpriority(os.PRIO_PROCESS, 0), session.execute(
        text("SELECT 1")).scalar_one()


def sleeper(session: Session, settings: Settings) -> None:
    session.execute(text("SELECT pg_sleep(2)"))


def make_app(database_url: str, **options: object) -> FastAPI:
    settings = Settings(database_url=None, run_scheduler=False, **options)  # type: ignore[arg-type]
    return create_app(settings, database_url=database_url, migrate_on_start=False)


@pytest.fixture
def apps(database_url: str) -> Iterator[tuple[FastAPI, FastAPI]]:
    """The same service twice: long reads in threads, and in helpers at nice +5."""
    throttle.forget_all()
    threads = make_app(database_url, long_read_helpers=False)
    helpers = make_app(database_url, long_read_nice=5)
    yield threads, helpers
    for app in (threads, helpers):
        app.state.engine.dispose()
        app.state.read_engine.dispose()
    throttle.forget_all()


def test_a_long_series_is_built_in_a_helper_at_a_lower_priority_with_the_same_answer(
    apps: tuple[FastAPI, FastAPI], sessions: sessionmaker[Session],
) -> None:
    threads, helpers = apps
    _, ingest = new_key(sessions, "ingest")
    _, finance = new_key(sessions, "finance")
    start = DAY + timedelta(hours=9, minutes=30)
    batch = [event("created", time=iso(start), vcpu=2, memory_mib=1024),
             event("killed", time=iso(start + timedelta(hours=2, seconds=7)))]
    with TestClient(threads) as client:
        stored = client.post("/v1/events", json=batch, headers=Keys.auth(ingest))
        assert stored.status_code == 200, stored.text
        in_threads = client.get("/v1/teams/team_1/usage", params=YEAR, headers=Keys.auth(finance))
    with TestClient(helpers) as client:
        in_helper = client.get("/v1/teams/team_1/usage", params=YEAR, headers=Keys.auth(finance))
        long_reads: LongReads = helpers.state.long_reads
        pid, niceness, answer = asyncio.run(long_reads.read(helper_facts))
    assert in_helper.status_code == in_threads.status_code == 200
    assert in_helper.content == in_threads.content
    used = [p for p in in_helper.json()["series"] if p["vcpu_seconds"] != "0"]
    assert len(used) == 3  # 09:30-10:00, 10:00-11:00, 11:00-11:30:07
    assert in_helper.json()["totals"]["vcpu_seconds"] == "14414"
    assert pid != os.getpid()
    assert niceness == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
    assert answer == 1


def test_a_helper_that_dies_is_replaced_and_the_next_long_read_answers(
    apps: tuple[FastAPI, FastAPI], sessions: sessionmaker[Session],
) -> None:
    _, helpers = apps
    _, finance = new_key(sessions, "finance")
    long_reads: LongReads = helpers.state.long_reads
    with TestClient(helpers) as client:
        first = client.get("/v1/teams/team_1/usage", params=YEAR, headers=Keys.auth(finance))
        assert first.status_code == 200
        pid, _, _ = asyncio.run(long_reads.read(helper_facts))
        os.kill(pid, signal.SIGKILL)
        again = client.get("/v1/teams/team_1/usage", params=YEAR, headers=Keys.auth(finance))
        assert again.status_code == 200, again.text
        assert again.content == first.content
        replacement, _, _ = asyncio.run(long_reads.read(helper_facts))
    assert replacement != pid


def test_a_helper_read_past_its_time_limit_is_overloaded(database_url: str) -> None:
    app = make_app(database_url, read_statement_timeout_ms=100)
    long_reads: LongReads = app.state.long_reads
    try:
        with pytest.raises(Overloaded, match="ran past its time limit"):
            asyncio.run(long_reads.read(sleeper))
        # The helper is still there for the next read.
        assert asyncio.run(long_reads.read(helper_facts))[2] == 1
    finally:
        long_reads.close()
        app.state.engine.dispose()
        app.state.read_engine.dispose()


def exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_a_helper_exits_when_its_api_process_is_killed(database_url: str) -> None:
    """An API process killed outright (SIGKILL: no shutdown of its own) leaves no helper."""
    import subprocess
    import sys
    import time

    script = (
        "import asyncio, os, sys\n"
        "from metering.api.long_reads import LongReads\n"
        "from metering.config import Settings\n"
        "from tests.metering.test_long_reads import helper_facts\n"
        "reads = LongReads(Settings(database_url=None, run_scheduler=False), sys.argv[1])\n"
        "print(asyncio.run(reads.read(helper_facts))[0], flush=True)\n"
        "os.kill(os.getpid(), 9)\n")
    run = subprocess.run([sys.executable, "-c", script, database_url], capture_output=True,
                         text=True, timeout=60, cwd=str(Path(__file__).parents[2]))
    assert run.returncode == -9, run.stderr
    helper = int(run.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not exited(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exited(helper)
