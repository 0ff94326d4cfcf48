"""Events no orchestrator should send, and what each costs: one per-event error, never the batch.

A zero or garbage time is refused before it can make work proportional to its span; ids
outside the id alphabet, times that are not RFC 3339, NULs, huge strings and deep nesting are
refused by index while the good events beside them are stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import Keys, event


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=1)


def post(client: TestClient, key: str, batch: object) -> dict[str, Any]:
    # The standard library writes nesting deeper than orjson would.
    response = client.post("/v1/events", content=json.dumps(batch).encode(),
                           headers={**Keys.auth(key), "content-type": "application/json"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def rows_everywhere(engine: Engine) -> int:
    with engine.connect() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('alembic_version', 'plans', 'plan_versions', 'api_keys')"))]
        return sum(int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one())
                   for t in tables)


def test_zero_time_pair_is_refused_bills_nothing_and_writes_a_handful_of_rows(
    client: TestClient, api_keys: Keys, engine: Engine
) -> None:
    before = rows_everywhere(engine)
    created = event("created", team="team_zero", execution="exe_zero", sandbox="sbx_zero",
                    time="0001-01-01T00:00:00.000Z", vcpu=2, memory_mib=1024)
    killed = event("killed", team="team_zero", execution="exe_zero", sandbox="sbx_zero",
                   time=iso(NOW), reason="request")
    body = post(client, api_keys.ingest, [created, killed])
    assert body["rejected"] == 1 and body["accepted"] == 1
    assert body["errors"][0]["index"] == 0 and body["errors"][0]["code"] == "too_old"
    # The team, its credit grant, the one stored event and its execution: a handful.
    assert rows_everywhere(engine) - before <= 12
    usage = client.get("/v1/teams/team_zero/usage?start=2000-01-01T00:00:00Z&granularity=month",
                       headers=Keys.auth(api_keys.finance))
    assert usage.status_code == 200
    assert usage.json()["totals"]["cost"] in ("0", "0.00", "0.000000")
    sandboxes = client.get("/v1/teams/team_zero/sandboxes", headers=Keys.auth(api_keys.finance))
    for row in sandboxes.json()["data"]:
        assert not row["started_at"].startswith("1-")


def test_one_hostile_value_never_fails_its_batch(
    client: TestClient, api_keys: Keys, engine: Engine
) -> None:
    nested: Any = 1
    for _ in range(254):
        nested = [nested]
    good = event("created", execution="exe_good", time=iso(T0), vcpu=1, memory_mib=512)
    sample = event("host_stats", execution="exe_good", time=iso(T0 + timedelta(seconds=1)),
                   cpu_pct=5)
    hostile = [
        event("created", execution="exe_a", time="0001-01-01T00:30:00+01:00", vcpu=1,
              memory_mib=1),
        event("created", execution="exe_b", time=iso(T0), vcpu=1, memory_mib=1, deep=nested),
        event("created", execution="exe_c", time=iso(T0), vcpu=1, memory_mib=1,
              note="a\u0000b"),
        event("created", execution="exe_d", time=iso(T0), vcpu=1, memory_mib=1,
              template_id="t" * 100_000),
        event("created", execution="exe_e", team="team/slash", time=iso(T0), vcpu=1,
              memory_mib=1),
        event("created", execution="exe_f", time="2026-W49-1T08:00Z", vcpu=1, memory_mib=1),
        event("created", execution="exe_g", time="20261130T080000Z", vcpu=1, memory_mib=1),
        event("host_stats", execution="exe_h", sandbox="sbx 1", time=iso(T0), cpu_pct=1),
        event("host_stats", execution="x" * 129, time=iso(T0), cpu_pct=1),
        event("host_stats", execution="exe_i", time="1999-12-31T23:59:59.999Z", cpu_pct=1),
    ]
    batch = [good, *hostile, sample]
    body = post(client, api_keys.ingest, batch)
    assert body["accepted"] == 2, body
    assert sorted(e["index"] for e in body["errors"]) == list(range(1, len(hostile) + 1))
    codes = {e["index"]: e["code"] for e in body["errors"]}
    assert codes[1] == "too_old" and codes[10] == "too_old"
    assert {codes[i] for i in range(2, 10)} == {"invalid"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lifecycle_events")).scalar() == 1
        assert conn.execute(text(
            "SELECT count(*) FROM teams WHERE id = 'team/slash'")).scalar() == 0


def test_the_maximum_age_is_lifted_for_a_deliberate_backfill(
    client: TestClient, api_keys: Keys
) -> None:
    old = NOW - timedelta(days=500)
    backfill = [event("created", execution="exe_old", time=iso(old), vcpu=1, memory_mib=512),
                event("killed", execution="exe_old", time=iso(old + timedelta(minutes=5)))]
    refused = post(client, api_keys.ingest, backfill)
    assert refused["rejected"] == 2 and {e["code"] for e in refused["errors"]} == {"too_old"}
    assert "400 days" in refused["errors"][0]["message"]
    accepted = post(client, api_keys.admin, backfill)
    assert accepted["accepted"] == 2
    too_far = post(client, api_keys.finance, [event(
        "created", execution="exe_1999", time="1999-06-01T00:00:00Z", vcpu=1, memory_mib=1)])
    assert too_far["errors"][0]["code"] == "too_old"


def test_an_execution_never_changes_team(client: TestClient, api_keys: Keys) -> None:
    first = [event("created", team="team_1", execution="exe_t", time=iso(T0), vcpu=1,
                   memory_mib=512)]
    assert post(client, api_keys.ingest, first)["accepted"] == 1
    later = [
        event("killed", team="team_2", execution="exe_t", time=iso(T0 + timedelta(minutes=1))),
        event("host_stats", team="team_2", execution="exe_t",
              time=iso(T0 + timedelta(seconds=30)), cpu_pct=1),
        event("created", team="team_2", execution="exe_u", time=iso(T0), vcpu=1,
              memory_mib=512),
    ]
    body = post(client, api_keys.ingest, later)
    assert body["accepted"] == 1
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(0, "conflict"), (1, "conflict")]
    assert "team_1" not in body["errors"][0]["message"]  # no team learns another's id
    # Two teams naming one new execution in one batch: the first keeps it.
    mixed = [event("created", team="team_3", execution="exe_v", time=iso(T0), vcpu=1,
                   memory_mib=512),
             event("killed", team="team_4", execution="exe_v", time=iso(NOW))]
    body = post(client, api_keys.ingest, mixed)
    assert body["accepted"] == 1 and body["errors"][0]["index"] == 1
    running = client.get("/v1/teams/team_1/sandboxes", headers=Keys.auth(api_keys.finance))
    assert running.json()["data"][0]["end_kind"] is None
    none = client.get("/v1/teams/team_2/sandboxes", headers=Keys.auth(api_keys.finance))
    assert [r["execution_id"] for r in none.json()["data"]] == ["exe_u"]
