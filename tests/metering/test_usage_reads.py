"""Usage, executions and metrics as the dashboard reads them (contract sections 2 and 4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from metering.core import clock
from metering.ingest import jobs
from tests.conftest import Keys, event


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def post(client: TestClient, keys: Keys, batch: list) -> dict:
    response = client.post("/v1/events", json=batch, headers=Keys.auth(keys.ingest))
    assert response.status_code == 200, response.text
    return response.json()


def usage(client: TestClient, key: str, team: str, start: datetime, end: datetime, granularity: str = "day") -> dict:
    response = client.get(f"/v1/teams/{team}/usage", params={
        "start": iso(start), "end": iso(end), "granularity": granularity}, headers=Keys.auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def test_usage_and_cost_of_a_resized_execution(client: TestClient, api_keys: Keys) -> None:
    t0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
    post(client, api_keys, [
        event("created", time=iso(t0), vcpu=2, memory_mib=1024),
        event("updated", time=iso(t0 + timedelta(seconds=30)), vcpu=4),
        event("killed", time=iso(t0 + timedelta(seconds=60)), reason="request"),
    ])
    body = usage(client, api_keys.finance, "team_1", t0 - timedelta(hours=1), t0 + timedelta(hours=1), "hour")
    # 2 vCPU x 30 s + 4 vCPU x 30 s = 180 vCPU-s; 1 GiB x 60 s = 60 GiB-s
    assert body["totals"]["vcpu_seconds"] == "180"
    assert body["totals"]["gib_seconds"] == "60"
    # 180 x 0.000014 + 60 x 0.0000045 = 0.00252 + 0.00027
    assert body["totals"]["cost"] == "0.00279"
    assert [p["vcpu_seconds"] for p in body["series"]] == ["0", "180"]


def test_running_execution_accrues_until_now_then_stale_ends_at_newest_event(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(seconds=40)
    post(client, api_keys, [
        event("created", time=iso(start), vcpu=1, memory_mib=1024),
        event("host_stats", time=iso(now - timedelta(seconds=10)), cpu_pct=20),
    ])
    jobs.refresh_liveness(sessions)
    running = client.get("/v1/teams/team_1/sandboxes", params={"state": "running"},
                         headers=Keys.auth(api_keys.finance)).json()["data"]
    assert [r["state"] for r in running] == ["running"]
    assert float(running[0]["vcpu_seconds"]) >= 40  # accrues up to now
    # Two minutes later with no news, it ended at its newest event: 30 s of usage.
    clock.set_offset(timedelta(minutes=2))
    ended = client.get("/v1/teams/team_1/sandboxes", params={"state": "ended"},
                       headers=Keys.auth(api_keys.finance)).json()["data"]
    assert ended[0]["state"] == "ended" and ended[0]["end_inferred"] is True
    assert ended[0]["vcpu_seconds"] == "30"
    # A true end that arrives late replaces the inferred one.
    post(client, api_keys, [event("killed", time=iso(start + timedelta(seconds=35)), reason="timeout")])
    ended = client.get("/v1/teams/team_1/sandboxes", headers=Keys.auth(api_keys.finance)).json()["data"]
    assert ended[0]["vcpu_seconds"] == "35" and ended[0]["end_inferred"] is False
    assert ended[0]["end_reason"] == "timeout"


def test_paused_then_killed_bills_until_the_pause(client: TestClient, api_keys: Keys) -> None:
    t0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
    post(client, api_keys, [
        event("killed", time=iso(t0 + timedelta(minutes=50))),  # arrives first
        event("created", time=iso(t0), vcpu=1, memory_mib=2048),
        event("paused", time=iso(t0 + timedelta(minutes=10))),
    ])
    body = usage(client, api_keys.finance, "team_1", t0, t0 + timedelta(hours=1), "hour")
    assert body["totals"]["vcpu_seconds"] == "600"
    assert body["totals"]["gib_seconds"] == "1200"


def test_resumed_execution_bills_again(client: TestClient, api_keys: Keys) -> None:
    t0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
    post(client, api_keys, [
        event("created", execution="exe_a", time=iso(t0), vcpu=1, memory_mib=1024),
        event("paused", execution="exe_a", time=iso(t0 + timedelta(seconds=10))),
        event("resumed", execution="exe_b", time=iso(t0 + timedelta(minutes=5)), vcpu=1, memory_mib=1024),
        event("killed", execution="exe_b", time=iso(t0 + timedelta(minutes=5, seconds=5))),
    ])
    body = usage(client, api_keys.finance, "team_1", t0, t0 + timedelta(hours=1), "hour")
    assert body["totals"]["vcpu_seconds"] == "15"


def test_month_boundary_splits_usage(client: TestClient, api_keys: Keys) -> None:
    t0 = datetime(2026, 9, 30, 23, 59, 0, tzinfo=UTC)
    post(client, api_keys, [
        event("created", time=iso(t0), vcpu=1, memory_mib=1024),
        event("killed", time=iso(t0 + timedelta(minutes=2))),
    ])
    body = usage(client, api_keys.finance, "team_1", datetime(2026, 9, 1, tzinfo=UTC),
                 datetime(2026, 11, 1, tzinfo=UTC), "month")
    assert [(p["start"], p["vcpu_seconds"]) for p in body["series"]] == [
        ("2026-09-01T00:00:00.000Z", "60"), ("2026-10-01T00:00:00.000Z", "60")]


def test_team_key_sees_its_team_and_gets_404_for_another(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]
) -> None:
    t0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
    post(client, api_keys, [
        event("created", team="team_a", execution="ea", sandbox="sa", time=iso(t0), vcpu=1, memory_mib=1),
        event("created", team="team_b", execution="eb", sandbox="sb", time=iso(t0), vcpu=1, memory_mib=1),
    ])
    key_a = api_keys.team(sessions, "team_a")
    for path in ("/v1/teams/team_a/usage", "/v1/teams/team_a/sandboxes", "/v1/sandboxes/sa/metrics"):
        assert client.get(path, headers=Keys.auth(key_a)).status_code == 200, path
    for path in ("/v1/teams/team_b/usage", "/v1/teams/team_b/sandboxes", "/v1/sandboxes/sb/metrics"):
        response = client.get(path, headers=Keys.auth(key_a))
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_metrics_per_minute_survive_the_fold(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]
) -> None:
    t0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
    samples = [event("host_stats", time=iso(t0 + timedelta(seconds=s)), id=f"s{s}",
                     cpu_pct=float(s), memory_used_mib=100 + s) for s in range(0, 120, 10)]
    post(client, api_keys, [event("created", time=iso(t0), vcpu=1, memory_mib=1), *samples])
    params = {"start": iso(t0), "end": iso(t0 + timedelta(minutes=5))}
    before = client.get("/v1/sandboxes/sbx_1/metrics", params=params, headers=Keys.auth(api_keys.finance)).json()
    jobs.fold_samples(sessions)
    after = client.get("/v1/sandboxes/sbx_1/metrics", params=params, headers=Keys.auth(api_keys.finance)).json()
    assert before == after
    assert [(p["samples"], p["cpu_pct_avg"], p["cpu_pct_max"], p["memory_used_mib_max"]) for p in after["data"]] == [
        (6, "25", "50", 150), (6, "85", "110", 210)]
    # A replay after the fold is still a duplicate, a changed one a conflict.
    replay = post(client, api_keys, samples[:2])
    assert replay["duplicates"] == 2
    changed = dict(samples[0], data={**samples[0]["data"], "cpu_pct": 99})
    assert post(client, api_keys, [changed])["errors"][0]["code"] == "conflict"


def test_sandboxes_list_pages_with_a_cursor(client: TestClient, api_keys: Keys) -> None:
    t0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
    batch = []
    for i in range(5):
        batch.append(event("created", execution=f"e{i}", sandbox=f"s{i}", time=iso(t0 + timedelta(minutes=i)), vcpu=1, memory_mib=1))
        batch.append(event("killed", execution=f"e{i}", sandbox=f"s{i}", time=iso(t0 + timedelta(minutes=i, seconds=1))))
    post(client, api_keys, batch)
    seen = []
    after = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/teams/team_1/sandboxes", params=params, headers=Keys.auth(api_keys.finance)).json()
        seen += [r["execution_id"] for r in page["data"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert seen == ["e4", "e3", "e2", "e1", "e0"]


def test_bad_read_parameters_are_named(client: TestClient, api_keys: Keys) -> None:
    response = client.get("/v1/teams/team_1/usage", params={"granularity": "week"}, headers=Keys.auth(api_keys.finance))
    assert response.status_code == 422 and "granularity" in response.json()["error"]["message"]
    response = client.get("/v1/teams/team_1/usage", params={
        "start": "2026-10-02T00:00:00Z", "end": "2026-10-01T00:00:00Z"}, headers=Keys.auth(api_keys.finance))
    assert response.status_code == 400 and "end" in response.json()["error"]["message"]
    response = client.get("/v1/teams/team_1/sandboxes", params={"after": "garbage!"}, headers=Keys.auth(api_keys.finance))
    assert response.status_code == 400 and "after" in response.json()["error"]["message"]


def test_a_year_of_hours_answers_every_hour_with_its_usage(
    client: TestClient, api_keys: Keys
) -> None:
    t0 = datetime(2026, 3, 9, 10, 30, tzinfo=UTC)
    post(client, api_keys, [
        event("created", time=iso(t0), vcpu=2, memory_mib=1024),
        event("killed", time=iso(t0 + timedelta(minutes=45))),
    ])
    year = usage(client, api_keys.finance, "team_1", datetime(2026, 1, 1, tzinfo=UTC),
                 datetime(2027, 1, 1, tzinfo=UTC), "hour")
    series = year["series"]
    assert len(series) == 8760
    assert series[0]["start"] == "2026-01-01T00:00:00.000Z"
    assert series[-1]["end"] == "2027-01-01T00:00:00.000Z"
    used = [p for p in series if p["vcpu_seconds"] != "0"]
    # 30 min x 2 vCPU in the 10:00 hour, 15 min in the 11:00 hour; 1 GiB throughout.
    assert used == [
        {"start": "2026-03-09T10:00:00.000Z", "end": "2026-03-09T11:00:00.000Z",
         "vcpu_seconds": "3600", "gib_seconds": "1800", "cost": "0.0585"},
        {"start": "2026-03-09T11:00:00.000Z", "end": "2026-03-09T12:00:00.000Z",
         "vcpu_seconds": "1800", "gib_seconds": "900", "cost": "0.02925"}]
    assert series[1] == {"start": "2026-01-01T01:00:00.000Z", "end": "2026-01-01T02:00:00.000Z",
                         "vcpu_seconds": "0", "gib_seconds": "0", "cost": "0"}
    assert year["totals"] == {"vcpu_seconds": "5400", "gib_seconds": "2700", "cost": "0.08775"}
    # A range that does not start on the hour: its first bucket is the part hour.
    part = usage(client, api_keys.finance, "team_1", t0 + timedelta(minutes=15),
                 t0 + timedelta(hours=2), "hour")
    assert [(p["start"], p["vcpu_seconds"]) for p in part["series"]] == [
        ("2026-03-09T10:45:00.000Z", "1800"), ("2026-03-09T11:00:00.000Z", "1800"),
        ("2026-03-09T12:00:00.000Z", "0")]


def test_the_hour_running_now_is_exact_from_its_rollup(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]
) -> None:
    """A read ending now takes the current hour's settled usage from its rollup, less what
    settled segments hold after now (an end stamped ahead of the clock): the same integers as
    integrating every segment, per team and in bulk, folded or not."""
    from metering.db import transaction
    from metering.executions import jobs as execution_jobs
    from metering.usage import bucket_usage_many
    from metering.usage.repository import bucket_usage

    now = datetime(2026, 11, 20, 10, 30, 0, 123000, tzinfo=UTC)
    clock.set_offset(now - datetime.now(UTC))
    hour = now.replace(minute=0, second=0, microsecond=0)
    t = "team_closing"

    def run(name: str, start: datetime, end: datetime, vcpu: int) -> list[dict]:
        return [event("created", team=t, sandbox=name, execution=name, time=iso(start),
                      vcpu=vcpu, memory_mib=512 * vcpu),
                event("killed", team=t, sandbox=name, execution=name, time=iso(end),
                      reason="request")]

    ahead = now + timedelta(seconds=20, milliseconds=7)  # stamped ahead of the clock
    post(client, api_keys, [
        *run("a", hour + timedelta(minutes=5), hour + timedelta(minutes=20), 2),
        *run("b", hour - timedelta(minutes=10), ahead, 1),
        *run("c", hour - timedelta(hours=2), hour + timedelta(minutes=25, milliseconds=1), 4),
    ])
    ms = 1
    expected_hour = (2 * 15 * 60_000 + 1 * (now - hour) // timedelta(milliseconds=ms)
                     + 4 * (25 * 60_000 + 1))
    expected_before = 1 * 10 * 60_000 + 4 * 2 * 3_600_000
    stale = timedelta(seconds=60)
    bounds = [hour - timedelta(hours=3), hour, now]
    for folded in (False, True):
        if folded:
            execution_jobs.fold_rollup_deltas(sessions)
        with transaction(sessions) as session:
            alone = bucket_usage(session, t, bounds, now, stale)
            many = bucket_usage_many(session, {t: bounds}, now, stale)[t]
        assert [u.vcpu_ms for u in alone] == [expected_before, expected_hour], folded
        assert [u.mib_ms for u in alone] == [512 * expected_before, 512 * expected_hour]
        assert many == alone
