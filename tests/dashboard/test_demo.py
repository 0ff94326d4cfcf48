"""`make demo`'s simulated orchestrator, against the real app over HTTP for a few seconds."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from fastapi.testclient import TestClient

from billing import demo
from tests.conftest import Keys, LiveServer

pytestmark = pytest.mark.usefixtures("dashboard_routes")


def test_the_simulation_sets_up_teams_posts_history_and_runs_sandboxes(
    live_server: LiveServer, client: TestClient, api_keys: Keys,
) -> None:
    teams = [replace(demo.TEAMS[0], history_budget=Decimal("2"), running=3),
             replace(demo.TEAMS[2], history_per_day=5, running=4)]
    now = datetime.now(UTC)
    rng = random.Random(1)
    auth = Keys.auth
    with httpx.Client(base_url=live_server.url, headers=auth(api_keys.finance)) as finance:
        assert demo.set_up_teams(finance, teams, now - timedelta(days=5)) == teams
        assert demo.set_up_teams(finance, teams, now - timedelta(days=5)) == []  # a rerun
    with httpx.Client(base_url=live_server.url, headers=auth(api_keys.ingest)) as ingest:
        events = list(demo.history(teams, now, 2, rng))
        assert demo.post_events(ingest, events) == len(events)
        orchestrator = demo.Orchestrator(ingest, teams, rng)
        for _ in range(4):
            orchestrator.tick(datetime.now(UTC))
    assert orchestrator.running(), orchestrator.refusals
    assert orchestrator.posted > len(orchestrator.running())
    for team in teams:
        balance = client.get(f"/v1/teams/{team.id}/balance", headers=auth(api_keys.finance))
        assert Decimal(balance.json()["month_to_date_spend"]) >= 0
    hobby = client.get(f"/v1/teams/{teams[0].id}/balance", headers=auth(api_keys.finance)).json()
    assert Decimal(hobby["credit_used"]) > Decimal("1.5")  # the history's cost, about $2
    running = client.get(f"/v1/teams/{teams[1].id}/sandboxes", params={"state": "running"},
                         headers=auth(api_keys.finance)).json()["data"]
    mine = {b.id for b in orchestrator.running() if b.team.id == teams[1].id}
    assert mine and mine <= {r["sandbox_id"] for r in running}


def test_the_banner_names_the_url_and_every_key() -> None:
    text = demo.banner("http://127.0.0.1:8000", "mk_finance_x",
                       {t.id: f"mk_team_{t.id}" for t in demo.TEAMS})
    assert "http://127.0.0.1:8000/dashboard" in text and "mk_finance_x" in text
    assert all(f"mk_team_{t.id}" in text for t in demo.TEAMS)
