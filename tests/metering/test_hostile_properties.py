"""Property: whatever hostile events sit beside them, the good events of a batch are stored and
the answer is never a server error (one bad value never fails its batch)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import Keys

NOW = datetime.now(UTC).replace(microsecond=0)
KINDS = ["sandbox.lifecycle.created", "sandbox.lifecycle.killed", "sandbox.lifecycle.updated",
         "sandbox.lifecycle.paused", "sandbox.lifecycle.resumed", "sandbox.host_stats"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["a\x00b", "\ud800", "x" * 100_000, "", " ", "../../etc", "team/slash"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


times = st.one_of(
    st.sampled_from([
        "0001-01-01T00:00:00.000Z", "0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59Z",
        "1999-12-31T23:59:59.999Z", "2026-W49-1T08:00Z", "20261130T080000Z", "yesterday",
        "2026-02-30T00:00:00Z", "2026-11-30T25:00:00Z", "2026-11-30T08:00:00",
        "2026-11-30T08:00:00.1234567891234Z", "2026-11-30T08:00:00+24:00"]),
    st.text(max_size=40), json_values,
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.just(UTC)).map(lambda d: d.isoformat()),
)
ids = st.one_of(st.text(min_size=1, max_size=140), json_values,
                st.sampled_from(["a\x00b", "x" * 129, "team/slash", "sbx 1", "é"]))


@st.composite
def hostile_event(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not an event object at all
    data: dict[str, Any] = {
        "team_id": draw(ids), "execution_id": draw(ids),
        "vcpu": draw(json_values), "memory_mib": draw(json_values),
        "cpu_pct": draw(json_values), "template_id": draw(ids),
        draw(st.text(max_size=10)): draw(json_values),
    }
    if draw(st.booleans()):
        data["deep"] = nested(draw(st.integers(200, 300)))
    event: dict[str, Any] = {
        "specversion": draw(st.sampled_from(["1.0", "0.3", 1])), "id": draw(ids),
        "source": draw(ids), "type": draw(st.sampled_from(KINDS)), "subject": draw(ids),
        "time": draw(times), "data": data if draw(st.integers(0, 9)) else draw(json_values),
    }
    for name in draw(st.lists(st.sampled_from(list(event)), max_size=2)):
        event.pop(name, None)
    return event


def good_events(tag: str, count: int) -> list[dict[str, Any]]:
    """Executions of their own: nothing hostile can name them by chance."""
    start = NOW - timedelta(hours=1)
    return [{
        "specversion": "1.0", "id": f"good-{tag}-{i}", "source": "orchestrator/good",
        "type": "sandbox.lifecycle.created", "subject": f"sbx_{tag}_{i}",
        "time": (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "data": {"team_id": "team_good", "execution_id": f"exe_{tag}_{i}", "vcpu": 1,
                 "memory_mib": 512},
    } for i in range(count)]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(hostile=st.lists(hostile_event(), min_size=1, max_size=6),
       good_count=st.integers(1, 3), order=st.randoms(use_true_random=False))
def test_good_events_are_stored_whatever_sits_beside_them(
    client: TestClient, api_keys: Keys, engine: Engine, hostile: list[Any], good_count: int,
    order: Any,
) -> None:
    tag = uuid.uuid4().hex[:12]
    good = good_events(tag, good_count)
    batch = [*good, *hostile]
    order.shuffle(batch)
    good_at = {i for i, e in enumerate(batch) if any(e is g for g in good)}
    response = client.post("/v1/events", content=json.dumps(batch).encode(),
                           headers={**Keys.auth(api_keys.ingest),
                                    "content-type": "application/json"})
    assert response.status_code == 200, response.text[:500]
    answer = response.json()
    assert not good_at & {e["index"] for e in answer["errors"]}, answer["errors"]
    assert answer["accepted"] + answer["duplicates"] + answer["rejected"] == len(batch)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM lifecycle_events WHERE id = ANY(:ids)"),
                              {"ids": [g["id"] for g in good]}).scalar_one()
    assert stored == good_count
