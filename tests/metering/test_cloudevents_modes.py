"""`POST /v1/events` in the three modes of the CloudEvents HTTP binding, driven by the official
CloudEvents Python SDK: binary, structured and batched, one answer body for all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cloudevents.core.bindings import http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from fastapi.testclient import TestClient

from tests.conftest import Keys

START = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)


def sdk_event(kind: str, execution: str, at: datetime, **data: Any) -> CloudEvent:
    return CloudEvent(
        attributes={"id": f"{execution}-{kind}", "source": "orchestrator/sdk",
                    "type": f"sandbox.lifecycle.{kind}", "subject": f"sbx_{execution}",
                    "time": at, "datacontenttype": "application/json"},
        data={"team_id": "team_sdk", "execution_id": execution, **data})


def lifecycle(execution: str) -> list[CloudEvent]:
    """One vCPU and 1 GiB for exactly 60 s."""
    return [sdk_event("created", execution, START, vcpu=1, memory_mib=1024),
            sdk_event("killed", execution, START + timedelta(seconds=60), reason="request")]


def test_binary_structured_and_batched_modes_bill_alike(
    client: TestClient, api_keys: Keys
) -> None:
    auth = Keys.auth(api_keys.ingest)
    for event in lifecycle("exe_binary"):
        message = http.to_binary_event(event)
        assert any(h.startswith("ce-") for h in message.headers)
        response = client.post("/v1/events", content=message.body,
                               headers={**auth, **message.headers})
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    for event in lifecycle("exe_structured"):
        message = http.to_structured_event(event)
        assert message.headers["content-type"].startswith("application/cloudevents+json")
        response = client.post("/v1/events", content=message.body,
                               headers={**auth, **message.headers})
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1
    # The SDK writes each event in the JSON format; a batch is their JSON array.
    fmt = JSONFormat()
    batch = b"[" + b",".join(fmt.write(e) for e in lifecycle("exe_batched")) + b"]"
    response = client.post("/v1/events", content=batch, headers={
        **auth, "content-type": "application/cloudevents-batch+json"})
    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": 0, "errors": []}

    usage = client.get("/v1/teams/team_sdk/sandboxes", headers=Keys.auth(api_keys.finance))
    rows = {r["execution_id"]: r for r in usage.json()["data"]}
    assert set(rows) == {"exe_binary", "exe_structured", "exe_batched"}
    for row in rows.values():
        assert (row["vcpu_seconds"], row["gib_seconds"]) == ("60", "60")


def test_a_single_event_answers_by_its_fate(client: TestClient, api_keys: Keys) -> None:
    auth = Keys.auth(api_keys.ingest)
    created = sdk_event("created", "exe_single", START, vcpu=1, memory_mib=512)
    message = http.to_binary_event(created)
    first = client.post("/v1/events", content=message.body, headers={**auth, **message.headers})
    again = client.post("/v1/events", content=message.body, headers={**auth, **message.headers})
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["duplicates"] == 1
    changed = http.to_structured_event(
        sdk_event("created", "exe_single", START, vcpu=2, memory_mib=512))
    conflict = client.post("/v1/events", content=changed.body, headers={**auth, **changed.headers})
    assert conflict.status_code == 409
    assert conflict.json()["errors"][0]["code"] == "conflict"
    invalid = http.to_binary_event(sdk_event("created", "exe_bad", START, vcpu=0, memory_mib=1))
    refused = client.post("/v1/events", content=invalid.body, headers={**auth, **invalid.headers})
    assert refused.status_code == 400
    assert refused.json()["rejected"] == 1
    assert refused.json()["errors"][0]["message"] == "data.vcpu: must be >= 1"
