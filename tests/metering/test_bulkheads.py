"""One key cannot starve the service: per-key limits answer `429 rate_limited`, reads have
connections of their own, and a read pool that is exhausted answers `503 overloaded` while
the orchestrator's path goes on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.app import create_app
from metering.api import throttle
from metering.auth import service as keys
from metering.config import KeyLimit, Settings
from metering.db import transaction
from tests.conftest import Keys, event

NOW = datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def limited(database_url: str, engine: Engine) -> Iterator[FastAPI]:
    """An app whose team keys may make two requests and then one per 1,000 s, and whose reads
    have one pooled connection (and one overflow), given up on after a second."""
    throttle.forget_all()
    settings = Settings(
        database_url=None, run_scheduler=False, read_pool_size=1, read_pool_timeout_s=1,
        key_limits={"team": KeyLimit(rate=0.001, burst=2, concurrency=4)})
    app = create_app(settings, database_url=database_url, migrate_on_start=False)
    yield app
    app.state.engine.dispose()
    app.state.read_engine.dispose()
    throttle.forget_all()


def new_key(sessions: sessionmaker[Session], role: str, team: str | None = None) -> tuple[str, str]:
    with transaction(sessions) as session:
        created = keys.create_key(session, role, team)
    return created.id, created.key


def test_a_key_over_its_allowance_gets_429_with_retry_after(
    limited: FastAPI, sessions: sessionmaker[Session]
) -> None:
    _, team_key = new_key(sessions, "team", "team_1")
    _, other_key = new_key(sessions, "team", "team_2")
    with TestClient(limited) as client:
        # The first request is judged by the allowance of a key not yet seen authenticated;
        # the next two spend the team key's burst.
        answers = [client.get("/v1/teams/team_1", headers=Keys.auth(team_key))
                   for _ in range(4)]
        assert [a.status_code for a in answers[:3]] == [404, 404, 404]  # no such team yet
        throttled = answers[3]
        assert throttled.status_code == 429
        assert throttled.json()["error"]["code"] == "rate_limited"
        assert int(throttled.headers["retry-after"]) >= 1
        assert throttled.headers["ratelimit-limit"] == "2"
        assert throttled.headers["ratelimit-remaining"] == "0"
        # The allowance is the key's own: another team's key is not throttled.
        assert client.get("/v1/teams/team_2", headers=Keys.auth(other_key)).status_code == 404
        # The health check is never throttled.
        assert client.get("/healthz").status_code == 200


def test_a_per_key_override_lifts_one_keys_allowance(
    database_url: str, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    key_id, team_key = new_key(sessions, "team", "team_1")
    settings = Settings(
        database_url=None, run_scheduler=False,
        key_limits={"team": KeyLimit(rate=0.001, burst=1, concurrency=1)},
        key_limit_overrides={key_id: KeyLimit(rate=0.001, burst=5, concurrency=1)})
    app = create_app(settings, database_url=database_url, migrate_on_start=False)
    throttle.forget_all()
    try:
        with TestClient(app) as client:
            codes = [client.get("/v1/teams/team_1", headers=Keys.auth(team_key)).status_code
                     for _ in range(7)]
        # The first request is judged by the allowance of a key not yet seen authenticated.
        assert codes.count(429) == 1 and codes[-1] == 429
    finally:
        app.state.engine.dispose()
        app.state.read_engine.dispose()
        throttle.forget_all()


def test_reads_cannot_take_the_orchestrators_connections(
    limited: FastAPI, sessions: sessionmaker[Session], api_keys: Keys
) -> None:
    read_pool = limited.state.read_engine
    held = [read_pool.connect(), read_pool.connect()]  # every read connection taken
    try:
        with TestClient(limited) as client:
            read = client.get("/v1/teams/team_1/usage", headers=Keys.auth(api_keys.finance))
            assert read.status_code == 503
            assert read.json()["error"]["code"] == "overloaded"
            assert read.headers["retry-after"] == "1"
            batch = [event("created", time=iso(NOW - timedelta(minutes=5)), vcpu=1,
                           memory_mib=512)]
            ingest = client.post("/v1/events", content=orjson.dumps(batch),
                                 headers=Keys.auth(api_keys.ingest))
            assert ingest.status_code == 200 and ingest.json()["accepted"] == 1
            feed = client.get("/v1/enforcement/actions", headers=Keys.auth(api_keys.ingest))
            assert feed.status_code == 200
    finally:
        for connection in held:
            connection.close()


class _Guarded:
    """The throttle in front of an app that holds requests to `held` paths until released:
    `call` answers the status one request of `token` got."""

    def __init__(self, settings: Settings, held: tuple[str, ...]) -> None:
        import asyncio
        from types import SimpleNamespace

        self.release = asyncio.Event()

        async def app(scope: dict, receive: object, send: object) -> None:
            if scope["path"] in held:
                await self.release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

        self.guard = throttle.Throttle(app, settings)
        self.app_ref = SimpleNamespace(state=SimpleNamespace(settings=settings))

    async def call(self, path: str, token: str) -> int:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "path": path, "app": self.app_ref,
                 "headers": [(b"authorization", f"Bearer {token}".encode())]}
        await self.guard(scope, None, send)  # type: ignore[arg-type]
        return int(sent[0]["status"])


def test_a_key_with_its_requests_in_flight_used_up_gets_429() -> None:
    """One request of the key is held inside the app: the next one of the same key is refused
    at once, another key's goes through, and once the first ends the key may ask again."""
    import asyncio

    settings = Settings(database_url=None, run_scheduler=False,
                        key_limits={"unresolved": KeyLimit(concurrency=1)})

    async def scenario() -> list[int]:
        throttle.forget_all()
        guarded = _Guarded(settings, ("/v1/teams/slow",))
        call, release = guarded.call, guarded.release
        held = asyncio.create_task(call("/v1/teams/slow", "key-a"))
        await asyncio.sleep(0)  # the held request is inside the app now
        second = await call("/v1/teams/fast", "key-a")
        other = await call("/v1/teams/fast", "key-b")
        release.set()
        first = await held
        again = await call("/v1/teams/fast", "key-a")
        return [first, second, other, again]

    assert asyncio.run(scenario()) == [200, 429, 200, 200]


def test_a_long_usage_series_costs_its_key_more_of_its_allowance(
    database_url: str, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """A year of hours (8,760 points) costs 9 tokens, a whole burst of 9: the key's next
    request is refused with the wait its bucket needs; a year of days (365 points) costs one."""
    _, hours_key = new_key(sessions, "team", "team_1")
    _, days_key = new_key(sessions, "team", "team_1")
    settings = Settings(database_url=None, run_scheduler=False, long_read_helpers=False,
                        key_limits={"team": KeyLimit(rate=0.5, burst=9, concurrency=4)})
    app = create_app(settings, database_url=database_url, migrate_on_start=False)
    throttle.forget_all()
    year = {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}
    try:
        with TestClient(app) as client:
            for key in (hours_key, days_key):  # each key's role is learned first
                assert client.get("/v1/teams/team_1", headers=Keys.auth(key)).status_code == 404
            hourly = client.get("/v1/teams/team_1/usage", params={**year, "granularity": "hour"},
                                headers=Keys.auth(hours_key))
            assert hourly.status_code == 200 and len(hourly.json()["series"]) == 8760
            asked = time.monotonic()
            refused = client.get("/v1/teams/team_1", headers=Keys.auth(hours_key))
            held = time.monotonic() - asked
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limited"
            # 1 token short: 2 s at 0.5/s, less what refilled during the long read. A refused
            # read is answered part-way into its wait (at most 1 s) and `Retry-After` counts
            # the rest, so the client is sent back no sooner than its bucket allows.
            told = int(refused.headers["retry-after"])
            assert told >= 1 and held <= 2  # held at most 1 s, and a second of slack
            assert held + told >= 1.5
            assert refused.headers["ratelimit-remaining"] == "0"

            daily = client.get("/v1/teams/team_1/usage", params={**year, "granularity": "day"},
                               headers=Keys.auth(days_key))
            assert daily.status_code == 200 and len(daily.json()["series"]) == 365
            assert client.get("/v1/teams/team_1", headers=Keys.auth(days_key)).status_code == 404
    finally:
        app.state.engine.dispose()
        app.state.read_engine.dispose()
        throttle.forget_all()


def test_a_key_met_for_the_first_time_reads_one_request_at_a_time_until_known() -> None:
    """A burst of reads from a key this process has not authenticated yet cannot fill the
    read pool: one read goes in, the others are told to retry, and once the key's role is
    known its own allowance applies. The orchestrator's path is not held back that way."""
    import asyncio

    settings = Settings(database_url=None, run_scheduler=False)

    async def scenario() -> list[int]:
        throttle.forget_all()
        guarded = _Guarded(settings, ("/v1/teams/slow", "/v1/events"))
        call, release = guarded.call, guarded.release
        held = asyncio.create_task(call("/v1/teams/slow", "new-key"))
        ingest = [asyncio.create_task(call("/v1/events", "orchestrator-key")) for _ in range(3)]
        await asyncio.sleep(0)  # the held requests are inside the app now
        second = await call("/v1/teams/fast", "new-key")
        throttle.remember("known-key", "key_1", "team")  # authenticated here before
        known = [asyncio.create_task(call("/v1/teams/slow", "known-key")) for _ in range(2)]
        await asyncio.sleep(0)
        release.set()
        return [await held, second, *[await t for t in ingest], *[await t for t in known]]

    assert asyncio.run(scenario()) == [200, 429, 200, 200, 200, 200, 200]


def test_reads_with_long_answers_take_turns_and_short_ones_do_not_wait(
    database_url: str, engine: Engine, sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three year-long hourly series asked at once run one after another (each working in a
    thread would hold the interpreter lock against the event loop that serves admissions);
    two monthly-by-day series asked beside them run at the same time, and every one answers."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from metering.usage import service as usage_service

    _, key = new_key(sessions, "finance")
    settings = Settings(database_url=None, run_scheduler=False, long_read_concurrency=1,
                        long_read_helpers=False)
    app = create_app(settings, database_url=database_url, migrate_on_start=False)
    throttle.forget_all()
    real = usage_service.usage_json
    lock = threading.Lock()
    long_running = [0, 0]  # now, most at once
    short_together = threading.Barrier(2, timeout=10)  # passes only with both short reads in

    def observed(*args: object) -> tuple[bytes, int]:
        if args[-1] == "hour":
            with lock:
                long_running[0] += 1
                long_running[1] = max(long_running)
            time.sleep(0.2)
            with lock:
                long_running[0] -= 1
        else:
            short_together.wait()
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(usage_service, "usage_json", observed)
    year = {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z",
            "granularity": "hour"}
    month = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
             "granularity": "day"}
    try:
        with TestClient(app) as client:
            # The key's role is learned first (until then it reads one request at a time).
            assert client.get("/v1/teams/team_1", headers=Keys.auth(key)).status_code == 404

            def read(params: dict[str, str]) -> tuple[int, int]:
                answer = client.get("/v1/teams/team_1/usage", params=params,
                                    headers=Keys.auth(key))
                return answer.status_code, len(answer.json().get("series", []))

            with ThreadPoolExecutor(5) as pool:
                answers = list(pool.map(read, [year, year, year, month, month]))
        assert answers == [(200, 8760)] * 3 + [(200, 30)] * 2
        assert long_running[1] == 1
    finally:
        app.state.engine.dispose()
        app.state.read_engine.dispose()
        throttle.forget_all()


def test_a_refused_read_is_answered_within_its_wait_and_the_orchestrators_path_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused reads are answered at a random moment within the wait they are told (at most
    a second), so clients honouring `Retry-After` do not come back as one wave; what they are
    held is taken off `Retry-After`. An orchestrator request is never held."""
    import asyncio
    import random

    held: list[float] = []

    async def sleep(seconds: float) -> None:  # float-ok: seconds
        held.append(seconds)

    monkeypatch.setattr(throttle.asyncio, "sleep", sleep)
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:  # float-ok: seconds
        draws.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", uniform)
    assert asyncio.run(throttle._spread("read", 0.4)) == 0.4  # all of a short wait
    assert asyncio.run(throttle._spread("read", 7.0)) == 1.0  # at most a second
    assert asyncio.run(throttle._spread("orchestrator", 7.0)) == 0.0
    assert asyncio.run(throttle._spread("read", 0.0)) == 0.0
    assert draws == [(0.0, 0.4), (0.0, 1.0)] and held == [0.4, 1.0]
