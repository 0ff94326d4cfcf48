"""POST /v1/admissions as the orchestrator sees it (contract section 3)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from metering import observability
from metering.core import clock
from metering.ingest import jobs
from tests.conftest import Keys, LiveServer, event


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def put_team(client: TestClient, keys: Keys, team: str, **body: object) -> dict:
    response = client.put(f"/v1/teams/{team}", json={"name": team, **body}, headers=Keys.auth(keys.finance))
    assert response.status_code == 200, response.text
    return response.json()


def admit(client: TestClient, keys: Keys, team: str, sandbox: str, **extra: object) -> httpx.Response:
    return client.post("/v1/admissions", json={"team_id": team, "sandbox_id": sandbox, "vcpu": 2,
                                               "memory_mib": 1024, **extra}, headers=Keys.auth(keys.ingest))


def start_running(client: TestClient, keys: Keys, team: str, count: int) -> None:
    now = datetime.now(UTC)
    batch = [event("created", team=team, sandbox=f"run_{i}", execution=f"exe_run_{i}",
                   time=iso(now - timedelta(seconds=5)), vcpu=1, memory_mib=512) for i in range(count)]
    assert client.post("/v1/events", json=batch, headers=Keys.auth(keys.ingest)).json()["accepted"] == count


def paths() -> dict[str, float]:
    """How admissions were answered so far in this process (event loop, thread, fallback)."""
    return {s.labels["path"]: s.value for family in text_string_to_metric_families(
        observability.render_metrics().decode()) for s in family.samples
        if s.name == "metering_admission_paths_total"}


# Hobby decides on money (credit), so its admissions take the threaded path; Pro without a
# spend limit is answered on the event loop (those that wait too long for one of its pooled
# connections overflow to the threaded path as `fallback`). Both must be exact under the race.
@pytest.mark.parametrize(("plan", "path"), [("hobby", "thread"), ("pro", "loop")])
def test_exactly_one_of_fifty_simultaneous_admissions_takes_the_last_slot(
    client: TestClient, api_keys: Keys, live_server: LiveServer, plan: str, path: str
) -> None:
    put_team(client, api_keys, "team_race", plan=plan)
    # Raise the start rate so only the concurrency lock decides.
    response = client.post("/v1/teams/team_race/overrides",
                           json={"starts_per_second": 1000, "concurrency": 20},
                           headers=Keys.auth(api_keys.finance))
    assert response.status_code == 201
    before = paths()
    start_running(client, api_keys, "team_race", 19)
    barrier = threading.Barrier(50)
    results: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            barrier.wait()
            r = http.post("/v1/admissions", json={"team_id": "team_race", "sandbox_id": f"new_{i}",
                                                  "vcpu": 1, "memory_mib": 512},
                          headers=Keys.auth(api_keys.ingest))
        with lock:
            results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count(200) == 1
    assert results.count(429) == 49
    after = paths()
    taken = {p: after.get(p, 0) - before.get(p, 0) for p in ("loop", "thread", "fallback")}
    assert taken[path] >= 1 and taken[path] + taken["fallback"] == 50, taken


@pytest.mark.parametrize("plan", ["hobby", "pro"])
def test_retry_gets_the_same_lease_and_an_unused_lease_frees_its_slot(
    client: TestClient, api_keys: Keys, plan: str
) -> None:
    put_team(client, api_keys, "team_l", plan=plan)
    client.post("/v1/teams/team_l/overrides", json={"concurrency": 1, "starts_per_second": 100},
                headers=Keys.auth(api_keys.finance))
    first = admit(client, api_keys, "team_l", "sbx_a")
    again = admit(client, api_keys, "team_l", "sbx_a")
    assert first.status_code == 200 and again.json()["lease_id"] == first.json()["lease_id"]
    refused = admit(client, api_keys, "team_l", "sbx_b")
    assert refused.status_code == 429
    body = refused.json()
    assert body["admitted"] is False and body["reason"] == "concurrency_limit"
    assert body["limit"] == 1 and body["current"] == 1
    clock.set_offset(timedelta(seconds=91))  # the lease of sbx_a was never used
    assert admit(client, api_keys, "team_l", "sbx_b").status_code == 200


def test_created_event_turns_the_lease_into_a_running_sandbox(client: TestClient, api_keys: Keys) -> None:
    put_team(client, api_keys, "team_c", plan="hobby")
    client.post("/v1/teams/team_c/overrides", json={"concurrency": 2, "starts_per_second": 100},
                headers=Keys.auth(api_keys.finance))
    assert admit(client, api_keys, "team_c", "sbx_1").status_code == 200
    now = datetime.now(UTC)
    client.post("/v1/events", json=[event("created", team="team_c", sandbox="sbx_1", execution="e1",
                                          time=iso(now), vcpu=2, memory_mib=1024)],
                headers=Keys.auth(api_keys.ingest))
    assert admit(client, api_keys, "team_c", "sbx_2").status_code == 200  # 1 running + 1 lease
    assert admit(client, api_keys, "team_c", "sbx_3").status_code == 429
    # Paused sandboxes do not count.
    client.post("/v1/events", json=[event("paused", team="team_c", sandbox="sbx_1", execution="e1",
                                          time=iso(now + timedelta(seconds=1)))],
                headers=Keys.auth(api_keys.ingest))
    assert admit(client, api_keys, "team_c", "sbx_3").status_code == 200


def test_refusals_carry_status_reason_limit_and_current(client: TestClient, api_keys: Keys) -> None:
    put_team(client, api_keys, "team_r", plan="hobby")
    big = admit(client, api_keys, "team_r", "s1", vcpu=16)
    assert big.status_code == 403 and big.json()["reason"] == "resources_exceed_plan"
    assert big.json()["limit"] == 8 and big.json()["current"] == 16
    long = admit(client, api_keys, "team_r", "s2", timeout_s=7200)
    assert long.status_code == 403 and long.json()["reason"] == "duration_exceeds_plan"
    ok = admit(client, api_keys, "team_r", "s3", timeout_s=600)
    assert ok.status_code == 200 and ok.json()["max_duration_s"] == 600
    rate = admit(client, api_keys, "team_r", "s4")  # hobby: 1 start per second
    assert rate.status_code == 429 and rate.json()["reason"] == "start_rate_limited"


def test_hobby_team_past_its_credit_is_refused_with_402(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]
) -> None:
    put_team(client, api_keys, "team_h", plan="hobby", effective_at="2026-01-01T00:00:00Z")
    # Backdated usage worth more than $100: 8 vCPU and 8 GiB for 200 h costs 80.64 + 25.92.
    start = datetime(2026, 2, 1, tzinfo=UTC)
    client.post("/v1/events", json=[
        event("created", team="team_h", sandbox="old", execution="old", time=iso(start), vcpu=8, memory_mib=8192),
        event("killed", team="team_h", sandbox="old", execution="old", time=iso(start + timedelta(hours=200))),
    ], headers=Keys.auth(api_keys.ingest))
    refused = admit(client, api_keys, "team_h", "new")
    assert refused.status_code == 402 and refused.json()["reason"] == "credit_exhausted"
    balance = client.get("/v1/teams/team_h/balance", headers=Keys.auth(api_keys.finance)).json()
    assert balance["credit_granted"] == "100.00"
    assert balance["credit_used"] == "106.56" and balance["credit_remaining"] == "0.00"


def test_blocked_team_and_spend_limit_are_refused(client: TestClient, api_keys: Keys,
                                                  sessions: sessionmaker[Session]) -> None:
    from metering.db import transaction
    from metering.teams.service import block_team

    put_team(client, api_keys, "team_p", plan="pro", spend_limit="0")
    r = admit(client, api_keys, "team_p", "s1")
    assert r.status_code == 402 and r.json()["reason"] == "spend_limit_reached"
    put_team(client, api_keys, "team_q", plan="pro")
    with transaction(sessions) as session:
        block_team(session, "team_q", "unpaid_invoice", datetime.now(UTC))
    r = admit(client, api_keys, "team_q", "s1")
    assert r.status_code == 402 and r.json()["reason"] == "team_blocked"
    jobs.refresh_liveness(sessions)


def test_admission_needs_an_ingest_key(client: TestClient, api_keys: Keys) -> None:
    r = client.post("/v1/admissions", json={"team_id": "t", "sandbox_id": "s", "vcpu": 1, "memory_mib": 1},
                    headers=Keys.auth(api_keys.finance))
    assert r.status_code == 403
    r = client.post("/v1/admissions", json={"team_id": "t", "sandbox_id": "s", "vcpu": 0, "memory_mib": 1},
                    headers=Keys.auth(api_keys.ingest))
    assert r.status_code == 422 and "vcpu" in r.json()["error"]["message"]


def test_pro_admissions_stay_on_the_event_loop_past_the_plan_cache_lifetime(
    app: FastAPI, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API process refreshes its plan versions in the background, so admissions a known
    Pro team makes keep their fast path however long the process runs (a lapsed cache used to
    send the team to the slower threaded path for 10 s)."""
    import time

    from billing.plans import repository as plan_repo
    from metering.auth import service as key_service
    from metering.db import transaction

    # Set before the app starts, so its refresher runs on the short cadence from the first.
    monkeypatch.setattr(plan_repo, "_CACHE_SECONDS", 1.5)
    monkeypatch.setattr(plan_repo, "REFRESH_SECONDS", 0.2)
    with transaction(sessions) as session:
        keys = Keys(ingest=key_service.create_key(session, "ingest").key,
                    finance=key_service.create_key(session, "finance").key,
                    admin=key_service.create_key(session, "admin").key)
    with TestClient(app) as client:
        put_team(client, keys, "team_fast", plan="pro")
        client.post("/v1/teams/team_fast/overrides",
                    json={"concurrency": 100, "starts_per_second": 100},
                    headers=Keys.auth(keys.finance))
        assert admit(client, keys, "team_fast", "warm").status_code == 200  # known now
        before = paths()
        for i in range(20):  # 4 s: well over two cache lifetimes
            assert admit(client, keys, "team_fast", f"sbx_{i}").status_code == 200
            time.sleep(0.2)
        after = paths()
    taken = {p: after.get(p, 0) - before.get(p, 0) for p in ("loop", "thread", "fallback")}
    assert taken == {"loop": 20, "thread": 0, "fallback": 0}, taken


@pytest.fixture
def lease_commit_modes(engine: Engine) -> Iterator[Callable[[], dict[str, str]]]:
    """For every lease inserted from now on: `synchronous_commit` in its transaction ("off":
    its commit does not wait for the disk)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE lease_commit_modes (lease_id text, mode text)")
        conn.exec_driver_sql("""
            CREATE FUNCTION record_lease_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO lease_commit_modes
              VALUES (NEW.id, current_setting('synchronous_commit'));
              RETURN NEW;
            END $$""")
        conn.exec_driver_sql("CREATE TRIGGER record_lease_commit_mode AFTER INSERT ON leases "
                             "FOR EACH ROW EXECUTE FUNCTION record_lease_commit_mode()")

    def modes() -> dict[str, str]:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT lease_id, mode FROM lease_commit_modes").all()
        return {lease: mode for lease, mode in rows}

    try:
        yield modes
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER record_lease_commit_mode ON leases")
            conn.exec_driver_sql("DROP FUNCTION record_lease_commit_mode()")
            conn.exec_driver_sql("DROP TABLE lease_commit_modes")


# Hobby admissions take the threaded path, Pro ones the event loop's (see the race above).
@pytest.mark.parametrize(("plan", "path"), [("hobby", "thread"), ("pro", "loop")])
@pytest.mark.parametrize("durable", [False, True])
def test_a_lease_commits_without_waiting_for_the_disk_unless_configured_to(
    app: FastAPI, client: TestClient, api_keys: Keys, monkeypatch: pytest.MonkeyPatch,
    lease_commit_modes: Callable[[], dict[str, str]], plan: str, path: str, durable: bool,
) -> None:
    monkeypatch.setattr(app.state.settings, "admission_durable_commit", durable)
    put_team(client, api_keys, "team_d", plan=plan)
    client.post("/v1/teams/team_d/overrides", json={"concurrency": 2, "starts_per_second": 100},
                headers=Keys.auth(api_keys.finance))
    warm = admit(client, api_keys, "team_d", "sbx_warm")  # the team is known from here on
    before = paths()
    first = admit(client, api_keys, "team_d", "sbx_1")
    after = paths()
    assert first.status_code == 200 and after.get(path, 0) - before.get(path, 0) == 1
    modes = lease_commit_modes()
    assert modes[first.json()["lease_id"]] == ("on" if durable else "off")
    assert modes[warm.json()["lease_id"]] == ("on" if durable else "off")
    # Committed either way: a retry gets the lease, and it holds its slot.
    assert admit(client, api_keys, "team_d", "sbx_1").json()["lease_id"] == first.json()["lease_id"]
    assert admit(client, api_keys, "team_d", "sbx_2").status_code == 429


def test_a_commit_that_skips_the_flush_wait_leaves_its_connection_waiting_for_the_disk(
    sessions: sessionmaker[Session], database_url: str,
) -> None:
    """The setting holds for the lease's transaction alone: ingest and everything else that
    later runs on the same pooled connection still waits for the disk."""
    import asyncio

    import psycopg
    from sqlalchemy import text

    from metering import db, db_async

    record = "INSERT INTO flush_modes VALUES (current_setting('synchronous_commit'))"
    with db.transaction(sessions) as session:
        session.execute(text("CREATE TEMP TABLE flush_modes (mode text)"))
        db.commit_with(session, record, {}, durable=False)
        assert session.execute(text("SELECT mode FROM flush_modes")).scalar_one() == "off"
        assert session.execute(text("SHOW synchronous_commit")).scalar_one() == "on"

    async def on_the_loop() -> tuple[str, str]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await conn.execute("CREATE TEMP TABLE flush_modes (mode text)")
            await db_async.commit_with(conn, record, {}, durable=False)
            recorded = await (await conn.execute("SELECT mode FROM flush_modes")).fetchone()
            now = await (await conn.execute("SHOW synchronous_commit")).fetchone()
            assert recorded is not None and now is not None
            return str(recorded[0]), str(now[0])

    assert asyncio.run(on_the_loop()) == ("off", "on")
