"""POST /v1/events as the orchestrator sees it: section 1 of the contract."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from metering import db, known
from metering.executions import repository as executions_repo
from metering.ingest import repository
from metering.usage.repository import ROLLUPS
from tests.conftest import Keys, event


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=2)


def post(client: TestClient, key: str, batch: object) -> dict:
    response = client.post("/v1/events", content=orjson.dumps(batch),
                           headers={**Keys.auth(key), "content-type": "application/cloudevents-batch+json"})
    assert response.status_code == 200, response.text
    return response.json()


def test_batch_accepted_then_replayed_as_duplicates(client: TestClient, api_keys: Keys) -> None:
    batch = [
        event("created", time=iso(T0), vcpu=2, memory_mib=1024),
        event("host_stats", time=iso(T0 + timedelta(seconds=1)), cpu_pct=12.5, memory_used_mib=300),
        event("killed", time=iso(T0 + timedelta(seconds=30)), reason="request"),
    ]
    first = post(client, api_keys.ingest, batch)
    assert first == {"accepted": 3, "duplicates": 0, "rejected": 0, "errors": []}
    again = post(client, api_keys.ingest, batch)
    assert again == {"accepted": 0, "duplicates": 3, "rejected": 0, "errors": []}


def test_same_key_different_content_is_a_conflict(client: TestClient, api_keys: Keys) -> None:
    created = event("created", time=iso(T0), vcpu=2, memory_mib=1024, id="e1")
    sample = event("host_stats", time=iso(T0 + timedelta(seconds=1)), cpu_pct=1, id="s1")
    post(client, api_keys.ingest, [created, sample])
    changed = event("created", time=iso(T0), vcpu=4, memory_mib=1024, id="e1")
    changed_sample = event("host_stats", time=iso(T0 + timedelta(seconds=1)), cpu_pct=2, id="s1")
    body = post(client, api_keys.ingest, [changed, changed_sample])
    assert body["accepted"] == 0 and body["rejected"] == 2
    assert {e["code"] for e in body["errors"]} == {"conflict"}
    assert [e["index"] for e in body["errors"]] == [0, 1]


def test_in_batch_duplicates_and_conflicts(client: TestClient, api_keys: Keys) -> None:
    a = event("created", time=iso(T0), vcpu=2, memory_mib=1024, id="x")
    b = event("created", time=iso(T0), vcpu=3, memory_mib=1024, id="x")
    body = post(client, api_keys.ingest, [a, a, b])
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 1, 1)
    assert body["errors"][0]["index"] == 2 and body["errors"][0]["code"] == "conflict"


def test_invalid_events_name_the_field_and_keep_the_good_ones(
    client: TestClient, api_keys: Keys, engine: Engine
) -> None:
    good = event("created", time=iso(T0), vcpu=2, memory_mib=1024)
    bad_vcpu = event("created", execution="exe_2", time=iso(T0), vcpu=0, memory_mib=1024)
    no_team = event("created", execution="exe_3", time=iso(T0), vcpu=1, memory_mib=1)
    del no_team["data"]["team_id"]
    bad_type = {**good, "id": "t", "type": "sandbox.lifecycle.exploded"}
    bad_time = {**good, "id": "u", "time": "yesterday"}
    future = event("host_stats", time=iso(NOW + timedelta(minutes=10)), id="future")
    not_object = 42
    body = post(client, api_keys.ingest, [good, bad_vcpu, no_team, bad_type, bad_time, future, not_object])
    assert body["accepted"] == 1 and body["rejected"] == 6
    by_index = {e["index"]: e for e in body["errors"]}
    assert by_index[1]["message"] == "data.vcpu: must be >= 1" and by_index[1]["code"] == "invalid"
    assert by_index[2]["message"].startswith("data.team_id")
    assert by_index[3]["message"].startswith("type:")
    assert by_index[4]["message"].startswith("time:")
    assert by_index[5]["code"] == "future_time"
    assert by_index[6]["code"] == "invalid"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lifecycle_events")).scalar() == 1


@pytest.mark.parametrize("field,value", [
    ("subject", "sbx one"), ("subject", ""), ("subject", "s" * 129),
    ("data.team_id", "team/1"), ("data.team_id", "t\u00e9am"), ("data.team_id", "t" * 129),
    ("data.execution_id", "exe\u00001"), ("data.execution_id", ""),
])
def test_a_sample_whose_identifier_is_not_one_is_refused_naming_it(
    client: TestClient, api_keys: Keys, field: str, value: str,
) -> None:
    """Samples as a fleet sends them (millisecond times, plain fields): each identifier is
    checked, whichever one is wrong, and the batch's other samples are stored."""
    moment = NOW - timedelta(minutes=1)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.250Z")
    good = [event("host_stats", execution=f"exe_id_{i}", sandbox=f"sbx_id_{i}", time=stamp,
                  cpu_pct=5, memory_used_mib=100) for i in range(3)]
    bad = event("host_stats", execution="exe_id_bad", sandbox="sbx_id_bad", time=stamp,
                cpu_pct=5, memory_used_mib=100)
    if field == "subject":
        bad["subject"] = value
    else:
        bad["data"][field.removeprefix("data.")] = value
    body = post(client, api_keys.ingest, [good[0], bad, *good[1:]])
    assert (body["accepted"], body["rejected"]) == (3, 1)
    assert [e["index"] for e in body["errors"]] == [1]
    assert body["errors"][0]["message"].startswith(f"{field}:")


def test_unknown_team_is_created_and_marked(client: TestClient, api_keys: Keys, engine: Engine) -> None:
    post(client, api_keys.ingest, [event("created", team="team_new", time=iso(T0), vcpu=1, memory_mib=512)])
    with engine.connect() as conn:
        row = conn.execute(text("SELECT auto_created FROM teams WHERE id = 'team_new'")).one()
    assert row[0] is True


def test_body_that_is_not_a_batch_is_400(client: TestClient, api_keys: Keys) -> None:
    for body in (b"{not json", b'{"specversion": "1.0"}', b'"hello"'):
        response = client.post("/v1/events", content=body, headers=Keys.auth(api_keys.ingest))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_request"


def test_too_many_events_is_413(client: TestClient, api_keys: Keys) -> None:
    batch = [event("host_stats", time=iso(T0), id=f"s{i}") for i in range(10_001)]
    response = client.post("/v1/events", content=orjson.dumps(batch), headers=Keys.auth(api_keys.ingest))
    assert response.status_code == 413
    assert "10000" in response.json()["error"]["message"]


def test_too_large_body_is_413(client: TestClient, api_keys: Keys) -> None:
    blob = b"[" + b" " * (10 * 1024 * 1024 + 1) + b"]"
    response = client.post("/v1/events", content=blob, headers=Keys.auth(api_keys.ingest))
    assert response.status_code == 413


def test_keys_are_required_and_scoped(client: TestClient, api_keys: Keys, sessions) -> None:
    batch = [event("created", time=iso(T0), vcpu=1, memory_mib=1)]
    assert client.post("/v1/events", json=batch).status_code == 401
    assert client.post("/v1/events", json=batch, headers=Keys.auth("mk_ingest_forged")).status_code == 401
    team_key = api_keys.team(sessions, "team_1")
    response = client.post("/v1/events", json=batch, headers=Keys.auth(team_key))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_revoked_key_is_refused_at_once(client: TestClient, api_keys: Keys) -> None:
    created = client.post("/v1/keys", json={"role": "ingest"}, headers=Keys.auth(api_keys.admin))
    assert created.status_code == 201
    key = created.json()["key"]
    assert client.post("/v1/events", json=[], headers=Keys.auth(key)).status_code == 200
    assert client.delete(f"/v1/keys/{created.json()['id']}", headers=Keys.auth(api_keys.admin)).status_code == 204
    assert client.post("/v1/events", json=[], headers=Keys.auth(key)).status_code == 401


def test_keys_are_stored_hashed(client: TestClient, api_keys: Keys, engine: Engine) -> None:
    with engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys")) for v in row)
    assert api_keys.ingest not in stored and api_keys.admin not in stored


def test_the_same_batch_posted_eight_times_at_once_is_stored_once(
    client: TestClient, api_keys: Keys, live_server, engine: Engine
) -> None:
    import threading

    import httpx

    batch = []
    for i in range(200):
        batch.append(event("created", execution=f"e{i}", sandbox=f"s{i}", time=iso(T0), vcpu=1, memory_mib=256))
        batch.append(event("host_stats", execution=f"e{i}", sandbox=f"s{i}", time=iso(T0 + timedelta(seconds=1))))
        batch.append(event("killed", execution=f"e{i}", sandbox=f"s{i}", time=iso(T0 + timedelta(seconds=10))))
    body = orjson.dumps(batch)
    answers: list[dict] = []
    barrier = threading.Barrier(8)

    def send() -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as http:
            barrier.wait()
            r = http.post("/v1/events", content=body, headers=Keys.auth(api_keys.ingest))
            assert r.status_code == 200, r.text
            answers.append(r.json())

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a["accepted"] for a in answers) == 600
    assert sum(a["duplicates"] for a in answers) == 7 * 600
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lifecycle_events")).scalar() == 400
        assert conn.execute(text("SELECT count(*) FROM host_stats_pending")).scalar() == 200
        usage = conn.execute(text(f"SELECT sum(vcpu_ms) FROM {ROLLUPS} r")).scalar()
    assert usage == 200 * 10_000  # each execution's 10 s settled into the rollups exactly once


def test_a_stored_sample_is_a_duplicate_whenever_the_database_says_so(
    client: TestClient, api_keys: Keys, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's samples go out pipelined; the database may refuse a stored key while the
    batch's later statements are still being sent (the refusal then arrives in the middle,
    and leaving the pipeline reports the rest as aborted). Either way the batch is stored
    once, through the exact path."""
    sample = event("host_stats", time=iso(T0 + timedelta(seconds=1)), cpu_pct=5, id="s1")
    created = event("created", time=iso(T0), vcpu=1, memory_mib=512, id="c1")
    assert post(client, api_keys.ingest, [created, sample])["accepted"] == 2
    real = db.driver_sql

    def after_a_pause(statement: Any) -> str:
        if statement is repository._RELEASE:
            time.sleep(0.2)  # the refusal of the insert is in before the next statement goes
        return real(statement)

    monkeypatch.setattr(db, "driver_sql", after_a_pause)
    fresh = event("host_stats", time=iso(T0 + timedelta(seconds=2)), cpu_pct=6, id="s2")
    body = post(client, api_keys.ingest, [sample, fresh])
    assert body == {"accepted": 1, "duplicates": 1, "rejected": 0, "errors": []}


def _execution(engine: Engine, execution_id: str = "exe_1") -> tuple[Any, ...]:
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT end_at, end_kind, inferred_end_at FROM executions WHERE execution_id = :x"),
            {"x": execution_id}).one()
    return tuple(row)


def test_lifecycle_events_beside_a_resent_sample_are_stored_and_applied(
    client: TestClient, api_keys: Keys, engine: Engine,
) -> None:
    """A batch's lifecycle events go out with its samples; when a resent sample sends the
    samples down the exact path, the lifecycle events still are stored and applied."""
    sample = event("host_stats", time=iso(T0 + timedelta(seconds=1)), cpu_pct=5, id="s1")
    created = event("created", time=iso(T0), vcpu=1, memory_mib=512, id="c1")
    assert post(client, api_keys.ingest, [created, sample])["accepted"] == 2
    killed = event("killed", time=iso(T0 + timedelta(seconds=30)), reason="request", id="k1")
    body = post(client, api_keys.ingest, [sample, killed])
    assert body == {"accepted": 1, "duplicates": 1, "rejected": 0, "errors": []}
    end_at, end_kind, _ = _execution(engine)
    assert (end_at, end_kind) == (T0 + timedelta(seconds=30), "killed")


def test_a_resent_lifecycle_event_leaves_a_settled_execution_settled(
    client: TestClient, api_keys: Keys, engine: Engine, sessions: sessionmaker[Session],
) -> None:
    """An execution that went quiet is settled at its last event; its created event sent
    again is a duplicate and changes nothing: the execution stays settled where it was."""
    created = event("created", time=iso(T0), vcpu=1, memory_mib=512, id="c1")
    sample = event("host_stats", time=iso(T0 + timedelta(seconds=5)), cpu_pct=5, id="s1")
    assert post(client, api_keys.ingest, [created, sample])["accepted"] == 2
    settled_at = T0 + timedelta(seconds=5)  # its newest event
    with db.transaction(sessions) as session:
        assert executions_repo.settle_stale(session, NOW, timedelta(minutes=1), 100) == ["exe_1"]
    assert _execution(engine) == (None, None, settled_at)
    body = post(client, api_keys.ingest, [created])
    assert body == {"accepted": 0, "duplicates": 1, "rejected": 0, "errors": []}
    assert _execution(engine) == (None, None, settled_at)


def test_a_resent_sample_beside_an_execution_the_process_forgot_is_answered(
    client: TestClient, api_keys: Keys, engine: Engine,
) -> None:
    """The claim of an execution the process does not know rides before the samples; when a
    resent sample sends them down the exact path, its owner is read again and the batch's
    lifecycle events are still applied."""
    sample = event("host_stats", time=iso(T0 + timedelta(seconds=1)), cpu_pct=5, id="s1")
    created = event("created", time=iso(T0), vcpu=1, memory_mib=512, id="c1")
    assert post(client, api_keys.ingest, [created, sample])["accepted"] == 2
    known.forget_all()
    killed = event("killed", time=iso(T0 + timedelta(seconds=30)), reason="request", id="k1")
    body = post(client, api_keys.ingest, [sample, killed])
    assert body == {"accepted": 1, "duplicates": 1, "rejected": 0, "errors": []}
    end_at, end_kind, _ = _execution(engine)
    assert (end_at, end_kind) == (T0 + timedelta(seconds=30), "killed")
    foreign = event("host_stats", team="team_2", time=iso(T0 + timedelta(seconds=2)), id="s2")
    known.forget_all()
    body = post(client, api_keys.ingest, [sample, foreign])
    assert body["rejected"] == 1 and body["errors"][0]["code"] == "conflict"
