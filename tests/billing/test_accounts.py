"""Plans, teams, credits, balance and quotes as finance and the dashboard use them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from tests.conftest import Keys, event


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_default_plans_are_seeded_with_the_contract_figures(client: TestClient, api_keys: Keys) -> None:
    plans = {p["code"]: p["current"] for p in client.get("/v1/plans", headers=Keys.auth(api_keys.finance)).json()["data"]}
    assert set(plans) == {"hobby", "pro", "enterprise"}
    assert plans["hobby"]["one_time_credit"] == "100.00" and plans["hobby"]["concurrency"] == 20
    assert plans["pro"]["monthly_fee"] == "150.00" and plans["pro"]["max_execution_s"] == 86400
    assert plans["enterprise"]["minimum_commitment"] == "3000.00"
    assert plans["enterprise"]["concurrency"] == 1100
    assert plans["hobby"]["vcpu_second_price"] == "0.000014"
    assert plans["hobby"]["gib_second_price"] == "0.0000045"


def test_plan_change_mid_month_prices_each_part_by_its_own_version(client: TestClient, api_keys: Keys) -> None:
    # Pro gets cheaper vCPU from Oct 16; the team is on Pro all month.
    r = client.put("/v1/plans/pro", json={"effective_at": "2026-10-16T00:00:00Z", "vcpu_second_price": "0.00001"},
                   headers=Keys.auth(api_keys.admin))
    assert r.status_code == 200, r.text
    assert [v["effective_at"][:10] for v in r.json()["versions"]] == ["1970-01-01", "2026-10-16"]
    client.put("/v1/teams/team_v", json={"plan": "pro", "effective_at": "2026-01-01T00:00:00Z"},
               headers=Keys.auth(api_keys.finance))
    # 1 vCPU for 10 h across the version change (5 h before, 5 h after).
    start = datetime(2026, 10, 15, 19, tzinfo=UTC)
    client.post("/v1/events", json=[
        event("created", team="team_v", time=iso(start), vcpu=1, memory_mib=1024),
        event("killed", team="team_v", time=iso(start + timedelta(hours=10))),
    ], headers=Keys.auth(api_keys.ingest))
    usage = client.get("/v1/teams/team_v/usage", params={"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z",
                                                        "granularity": "month"}, headers=Keys.auth(api_keys.finance)).json()
    # vCPU: 18000 s x 0.000014 + 18000 s x 0.00001 = 0.252 + 0.18; memory 36000 GiB-s x 0.0000045 = 0.162
    assert usage["totals"]["vcpu_seconds"] == "36000"
    assert usage["totals"]["cost"] == "0.594"
    # A team moved to Hobby from Oct 15 20:00 pays Hobby's prices from then on.
    client.put("/v1/teams/team_w", json={"plan": "pro", "effective_at": "2026-01-01T00:00:00Z"},
               headers=Keys.auth(api_keys.finance))
    client.put("/v1/teams/team_w", json={"plan": "hobby", "effective_at": "2026-10-15T20:00:00Z"},
               headers=Keys.auth(api_keys.finance))
    client.post("/v1/events", json=[
        event("created", team="team_w", execution="ew", time=iso(start), vcpu=1, memory_mib=1024),
        event("killed", team="team_w", execution="ew", time=iso(start + timedelta(hours=10))),
    ], headers=Keys.auth(api_keys.ingest))
    usage = client.get("/v1/teams/team_w/usage", params={"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z",
                                                        "granularity": "month"}, headers=Keys.auth(api_keys.finance)).json()
    # Pro until Oct 16 at 0.000014 (5 h), then its cheaper version... but the team left Pro at 20:00:
    # 1 h on Pro (0.0504) + 9 h on Hobby (0.4536) of vCPU, and 0.162 of memory.
    assert usage["totals"]["cost"] == "0.666"


def test_new_hobby_team_gets_its_credit_once(client: TestClient, api_keys: Keys) -> None:
    for _ in range(2):
        r = client.put("/v1/teams/team_n", json={"name": "N", "email": "n@example.com", "plan": "hobby"},
                       headers=Keys.auth(api_keys.finance))
        assert r.status_code == 200
    body = r.json()
    assert body["plan"] == "hobby" and body["limits"]["concurrency"] == 20 and body["auto_created"] is False
    grants = client.get("/v1/teams/team_n/credits", headers=Keys.auth(api_keys.finance)).json()["data"]
    assert [(g["amount"], g["kind"]) for g in grants] == [("100.00", "plan")]


def test_teams_first_seen_in_events_start_on_hobby_with_credit(client: TestClient, api_keys: Keys) -> None:
    now = datetime.now(UTC)
    client.post("/v1/events", json=[event("created", team="team_auto", time=iso(now), vcpu=1, memory_mib=1)],
                headers=Keys.auth(api_keys.ingest))
    team = client.get("/v1/teams/team_auto", headers=Keys.auth(api_keys.finance)).json()
    assert team["plan"] == "hobby" and team["auto_created"] is True
    balance = client.get("/v1/teams/team_auto/balance", headers=Keys.auth(api_keys.finance)).json()
    assert balance["credit_granted"] == "100.00" and balance["credit_enforced"] is True


def test_credits_grant_idempotently_and_burn_in_order(client: TestClient, api_keys: Keys) -> None:
    client.put("/v1/teams/team_g", json={"plan": "pro"}, headers=Keys.auth(api_keys.finance))
    headers = {**Keys.auth(api_keys.finance), "Idempotency-Key": "promo-1"}
    first = client.post("/v1/teams/team_g/credits", json={"amount": "25", "priority": 1, "reason": "promo"}, headers=headers)
    again = client.post("/v1/teams/team_g/credits", json={"amount": "25", "priority": 1, "reason": "promo"}, headers=headers)
    assert first.status_code == 201 and again.json()["id"] == first.json()["id"]
    client.post("/v1/teams/team_g/credits", json={"amount": "10", "priority": 0,
                                                   "expires_at": "2099-01-01T00:00:00Z"},
                headers=Keys.auth(api_keys.finance))
    grants = client.get("/v1/teams/team_g/credits", headers=Keys.auth(api_keys.finance)).json()["data"]
    assert [g["amount"] for g in grants] == ["10.00", "25.00"]  # priority 0 burns first
    bad = client.post("/v1/teams/team_g/credits", json={"amount": "-5"}, headers=Keys.auth(api_keys.finance))
    assert bad.status_code == 422 and "amount" in bad.json()["error"]["message"]


def test_addon_raises_a_limit_only_within_its_window(client: TestClient, api_keys: Keys) -> None:
    client.put("/v1/teams/team_a", json={"plan": "pro"}, headers=Keys.auth(api_keys.finance))
    now = datetime.now(UTC)
    r = client.post("/v1/teams/team_a/addons", json={"field": "concurrency", "delta": 100,
                                                     "starts_at": iso(now - timedelta(days=1)),
                                                     "ends_at": iso(now + timedelta(days=1))},
                    headers=Keys.auth(api_keys.finance))
    assert r.status_code == 201 and r.json()["limits"]["concurrency"] == 200
    r = client.post("/v1/teams/team_a/addons", json={"field": "concurrency", "delta": 50,
                                                     "starts_at": iso(now + timedelta(days=5))},
                    headers=Keys.auth(api_keys.finance))
    assert r.json()["limits"]["concurrency"] == 200


def test_quote_prices_a_described_workload(client: TestClient, api_keys: Keys) -> None:
    r = client.get("/v1/plans/pro/quote", params={"vcpu": 2, "memory_mib": 1024, "seconds": 30, "runs": 100000},
                   headers=Keys.auth(api_keys.finance))
    assert r.status_code == 200, r.text
    q = r.json()
    # 6,000,000 vCPU-s x 0.000014 = 84; 3,000,000 GiB-s x 0.0000045 = 13.5
    assert (q["vcpu_seconds"], q["gib_seconds"], q["usage_cost"]) == ("6000000", "3000000", "97.50")
    assert q["total"] == "247.50"  # + the $150 Pro fee
    assert client.get("/v1/plans/nope/quote", params={"vcpu": 1, "memory_mib": 1, "seconds": 1},
                      headers=Keys.auth(api_keys.finance)).status_code == 404


def test_team_keys_read_only_their_team(client: TestClient, api_keys: Keys, sessions) -> None:
    client.put("/v1/teams/team_x", json={"plan": "pro"}, headers=Keys.auth(api_keys.finance))
    client.put("/v1/teams/team_y", json={"plan": "pro"}, headers=Keys.auth(api_keys.finance))
    key = api_keys.team(sessions, "team_x")
    assert client.get("/v1/teams/team_x/balance", headers=Keys.auth(key)).status_code == 200
    for path in ("/v1/teams/team_y", "/v1/teams/team_y/balance", "/v1/teams/team_y/credits"):
        assert client.get(path, headers=Keys.auth(key)).status_code == 404
    assert client.put("/v1/teams/team_x", json={"plan": "hobby"}, headers=Keys.auth(key)).status_code == 403
    assert client.put("/v1/plans/pro", json={"monthly_fee": "1"}, headers=Keys.auth(api_keys.finance)).status_code == 403
