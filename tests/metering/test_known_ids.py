"""The process's memory of known executions is bounded and never changes an answer."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from fastapi.testclient import TestClient

from metering import known
from tests.conftest import Keys, event

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=1)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def small_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(known, "execution_owners", known.KnownOwners(generation=4))
    yield


def post(client: TestClient, key: str, batch: list[dict[str, object]]) -> dict[str, object]:
    response = client.post("/v1/events", content=orjson.dumps(batch),
                           headers={**Keys.auth(key), "content-type": "application/cloudevents-batch+json"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_memory_holds_two_generations_and_keeps_ids_in_use() -> None:
    remembered = known.KnownOwners(generation=4)
    for n in range(50):  # the same memory a committed ingest fills
        remembered.remember({f"exe_{n}": "team_1"})
        assert len(remembered) <= 8
    assert remembered.owner("exe_49") == "team_1" and remembered.owner("exe_0") is None
    # An id asked about moves forward and survives rotations that drop its generation.
    kept = known.KnownOwners(generation=4)
    kept.remember({"exe_hot": "team_1"})
    for n in range(40):
        kept.remember({f"exe_{n}": "team_1"})
        assert kept.owner("exe_hot") == "team_1"
    assert len(kept) <= 8


def test_a_fleet_of_50_000_running_executions_is_remembered_whole() -> None:
    # Each ingest helper sees the whole fleet, in whatever order batches reach it: once
    # every running execution is known, none is forgotten again (a forgotten one costs the
    # database a question in every batch that names it).
    remembered = known.KnownOwners()
    fleet = [f"exe_{n}" for n in range(50_000)]
    rounds = random.Random(7)
    for execution in fleet:
        remembered.remember({execution: "team_1"})
    for _ in range(4):
        order = fleet[:]
        rounds.shuffle(order)
        blocks = [order[i:i + 1_000] for i in range(0, len(order), 1_000)]
        for block in blocks[:len(blocks) * 3 // 4]:  # this helper's share of a second
            assert all(remembered.owner(execution) == "team_1" for execution in block)


def test_a_churning_fleet_is_held_at_what_ran_in_the_last_two_minutes() -> None:
    # 1,000 sandboxes running, each replaced after 10 minutes (100 new executions a minute),
    # far fewer than a generation holds: what ended is forgotten within two generations'
    # time all the same, and no running execution is ever forgotten.
    now = [0.0]  # float-ok: seconds
    remembered = known.KnownOwners(clock=lambda: now[0])
    held = []
    for second in range(3_600):
        now[0] = float(second)  # float-ok: seconds
        for slot in range(1_000):
            execution = f"exe_{slot}_{(second + slot) // 600}"
            if remembered.owner(execution) is None:
                assert (second + slot) % 600 == 0 or second == 0, "a running one was forgotten"
                remembered.remember({execution: "team_1"})
        held.append(len(remembered))
    # Two generations of about a minute each: the running 1,000 and what ended in the last
    # two minutes or so (~100 a minute), never the hour's 6,000.
    assert max(held[600:]) <= 1_000 + 3 * 100
    assert min(held[600:]) >= 1_000


def test_a_team_quiet_for_an_hour_is_still_known(monkeypatch: pytest.MonkeyPatch) -> None:
    # An API process learns teams from admissions only: one that started nothing for an
    # hour keeps its admissions' fast path, while executions that long gone are forgotten.
    now = [0.0]  # float-ok: seconds
    for generations in (known.teams._known, known.execution_owners._owner):
        monkeypatch.setattr(generations, "_clock", lambda: now[0])
        monkeypatch.setattr(generations, "_started", 0.0)
    known.teams.remember(["quiet"])
    known.execution_owners.remember({"quiet": "team_1"})
    for minute in range(1, 61):
        now[0] = 60.0 * minute  # float-ok: seconds
        known.teams.remember([f"busy_{minute}"])
        known.execution_owners.remember({f"busy_{minute}": "team_1"})
    try:
        assert known.teams.unknown(["quiet"]) == []
        assert known.execution_owners.owner("quiet") is None
    finally:
        known.forget_all()  # the module's memories, shared with other tests in this process


def test_forgotten_executions_still_keep_their_team(
    client: TestClient, api_keys: Keys, small_memory: None
) -> None:
    # Twenty executions for team_1: more than two generations of the memory, so the first
    # ones are forgotten by the process (they remain in the database).
    for n in range(20):
        body = post(client, api_keys.ingest, [event(
            "created", execution=f"exe_{n}", sandbox=f"sbx_{n}", time=iso(T0),
            vcpu=1, memory_mib=512)])
        assert body["accepted"] == 1
    assert len(known.execution_owners) <= 8
    assert known.execution_owners.owner("exe_0") is None
    # A forgotten execution is still team_1's: another team naming it is refused...
    body = post(client, api_keys.ingest, [event(
        "host_stats", execution="exe_0", sandbox="sbx_0", team="team_2",
        time=iso(T0 + timedelta(seconds=1)), cpu_pct=5)])
    assert body["rejected"] == 1 and body["errors"][0]["code"] == "conflict"  # type: ignore[index]
    # ...and its own team's events are stored, once.
    sample = event("host_stats", execution="exe_0", sandbox="sbx_0",
                   time=iso(T0 + timedelta(seconds=1)), cpu_pct=5)
    assert post(client, api_keys.ingest, [sample])["accepted"] == 1
    assert post(client, api_keys.ingest, [sample])["duplicates"] == 1
    killed = event("killed", execution="exe_1", sandbox="sbx_1", time=iso(T0 + timedelta(minutes=1)),
                   reason="request")
    assert post(client, api_keys.ingest, [killed])["accepted"] == 1
    page = client.get("/v1/teams/team_1/sandboxes?limit=100", headers=Keys.auth(api_keys.admin))
    assert page.status_code == 200, page.text
    rows = {row["execution_id"]: row for row in page.json()["data"]}
    assert len(rows) == 20
    assert rows["exe_1"]["state"] == "ended" and rows["exe_1"]["end_kind"] == "killed"
    other = client.get("/v1/teams/team_2/sandboxes", headers=Keys.auth(api_keys.admin))
    assert other.status_code == 200 and other.json()["data"] == []
