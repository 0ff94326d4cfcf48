"""Sandbox ids are the orchestrator's and may repeat across teams: each team sees only its own
sandbox of an id, through the API and the dashboard; finance names the team."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import Keys, event

T0 = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_shared_sandbox(client: TestClient, api_keys: Keys) -> None:
    batch = []
    for team, cpu in (("team_a", 10.0), ("team_b", 99.0)):
        batch += [
            event("created", team=team, execution=f"exe_{team}", sandbox="sbx_shared",
                  time=iso(T0), vcpu=1, memory_mib=512),
            event("host_stats", team=team, execution=f"exe_{team}", sandbox="sbx_shared",
                  time=iso(T0 + timedelta(seconds=5)), cpu_pct=cpu, memory_used_mib=100),
        ]
    response = client.post("/v1/events", content=orjson.dumps(batch),
                           headers=Keys.auth(api_keys.ingest))
    assert response.json()["accepted"] == 4


def cpu_max(response: object) -> list[str]:
    body = response.json()  # type: ignore[attr-defined]
    return [p["cpu_pct_max"] for p in body["data"]]


def test_each_team_sees_only_its_own_sandbox_of_a_shared_id(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]
) -> None:
    run_shared_sandbox(client, api_keys)
    window = {"start": iso(T0), "end": iso(T0 + timedelta(minutes=5))}
    key_a, key_b = api_keys.team(sessions, "team_a"), api_keys.team(sessions, "team_b")
    mine_a = client.get("/v1/sandboxes/sbx_shared/metrics", params=window, headers=Keys.auth(key_a))
    mine_b = client.get("/v1/sandboxes/sbx_shared/metrics", params=window, headers=Keys.auth(key_b))
    assert (mine_a.status_code, mine_b.status_code) == (200, 200)
    assert cpu_max(mine_a) == ["10"] and cpu_max(mine_b) == ["99"]
    # A team key naming another team's path is told nothing exists.
    other = client.get("/v1/teams/team_b/sandboxes/sbx_shared/metrics", headers=Keys.auth(key_a))
    assert other.status_code == 404
    finance = Keys.auth(api_keys.finance)
    named = client.get("/v1/teams/team_b/sandboxes/sbx_shared/metrics", params=window,
                       headers=finance)
    assert cpu_max(named) == ["99"]
    ambiguous = client.get("/v1/sandboxes/sbx_shared/metrics", headers=finance)
    assert ambiguous.status_code == 409


def test_the_dashboard_shows_each_team_its_own_sandbox(
    app: FastAPI, client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    run_shared_sandbox(client, api_keys)
    key_b = api_keys.team(sessions, "team_b")
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as web:
        assert web.post("/dashboard/sign-in", data={"key": key_b}).status_code == 303
        page = web.get("/dashboard/api/teams/team_b/sandboxes/sbx_shared")
        assert page.status_code == 200, page.text
        points = page.json()["metrics"]["points"]
        assert [p["cpu_max"] for p in points] == ["99"]
