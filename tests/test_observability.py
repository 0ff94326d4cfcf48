"""Metrics, request ids and JSON access logs, scraped and read as an operator would."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import Engine

from billing.app import create_app
from metering import observability
from metering.config import Settings
from tests.conftest import Keys, event

ROOT = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(body: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.fixture
def observed_app(database_url: str, engine: Engine, settings: Settings) -> Iterator[FastAPI]:
    """A fresh app (middleware can only be added before an app starts), instrumented."""
    app = create_app(settings, database_url=database_url, migrate_on_start=False)
    if not hasattr(app.state, "database_gauges"):  # until the composition root installs it
        observability.install(app)
    app.state.database_gauges.ttl_s = 0  # every scrape reads the database afresh
    yield app
    app.state.engine.dispose()


def test_counters_move_with_events_and_admissions_and_gauges_read_the_database(
    observed_app: FastAPI, api_keys: Keys, engine: Engine
) -> None:
    now = datetime.now(UTC)
    batch = [
        event("created", sandbox="sbx_m1", execution="exe_m1", time=iso(now - timedelta(seconds=30)),
              vcpu=1, memory_mib=512),
        event("created", sandbox="sbx_m2", execution="exe_m2", time=iso(now - timedelta(seconds=30)),
              vcpu=1, memory_mib=512),
        event("host_stats", sandbox="sbx_m1", execution="exe_m1", time=iso(now - timedelta(seconds=1)),
              cpu_pct=10.0),
    ]
    invalid = event("created", sandbox="sbx_m3", execution="exe_m3", time=iso(now), vcpu=0,
                    memory_mib=512)
    auth = Keys.auth(api_keys.ingest)
    with TestClient(observed_app) as client:
        before = scrape(client)
        assert client.post("/v1/events", json=batch, headers=auth).json()["accepted"] == 3
        assert client.post("/v1/events", json=[*batch, invalid], headers=auth).json()["duplicates"] == 3
        admit = {"team_id": "team_1", "sandbox_id": "sbx_new", "vcpu": 1, "memory_mib": 512}
        assert client.post("/v1/admissions", json=admit, headers=auth).status_code == 200
        too_big = {**admit, "sandbox_id": "sbx_big", "vcpu": 512}
        assert client.post("/v1/admissions", json=too_big, headers=auth).status_code == 403
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO outbox_messages (id, key, type, team_id, payload, created_at, attempts,"
                " next_attempt_at) VALUES ('msg_1', 'k1', 'kill_order', 'team_1', '{}',"
                " now() - interval '90 seconds', 2, now())"))
            conn.execute(text(
                "INSERT INTO invoices (id, team_id, period, kind, status, currency, subtotal,"
                " credits_applied, total, finalized_at) VALUES ('inv_1', 'team_1', '2026-10',"
                " 'period', 'sync_failed', 'usd', 10, 0, 10, now() - interval '1 hour')"))
        after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("metering_ingest_events_total", type="accepted") == 3
    assert delta("metering_ingest_events_total", type="duplicate") == 3
    assert delta("metering_ingest_events_total", type="rejected") == 1
    assert delta("metering_ingest_rejections_total", code="invalid") == 1
    assert delta("metering_ingest_duration_seconds_count") == 2
    assert delta("metering_ingest_batch_events_sum") == 7
    assert delta("metering_admission_decisions_total", reason="admitted") == 1
    assert delta("metering_admission_decisions_total", reason="resources_exceed_plan") == 1
    assert delta("metering_admission_duration_seconds_count") == 2
    assert delta("metering_http_requests_total", method="POST", route="/v1/events", status="200") == 2
    assert delta("metering_http_request_duration_seconds_count", method="POST",
                 route="/v1/admissions") == 2
    assert value(after, "metering_database_up") == 1
    assert value(after, "metering_open_executions") == 2
    assert value(after, "metering_webhook_outbox_pending") == 1
    assert value(after, "metering_webhook_outbox_retrying") == 1
    assert 60 < value(after, "metering_webhook_outbox_oldest_pending_seconds") < 600
    assert value(after, "metering_stripe_sync_failed") == 1
    assert value(after, "metering_stripe_sync_pending") == 0
    assert value(after, "metering_stripe_sync_oldest_pending_seconds") >= 3600
    assert value(after, "process_resident_memory_bytes") > 0


def test_request_ids_are_echoed_or_made_and_each_request_logs_one_json_line(
    observed_app: FastAPI, api_keys: Keys
) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    observability.configure_json_logging("INFO", stream=stream)
    try:
        with TestClient(observed_app) as client:
            given = client.get("/v1/teams/team_1", headers={
                **Keys.auth(api_keys.finance), "X-Request-Id": "orch-42.a"})
            made = client.get("/v1/teams/team_2/usage", headers=Keys.auth(api_keys.finance))
            forged = client.get("/v1/teams/team_1", headers={
                **Keys.auth(api_keys.finance), "X-Request-Id": "x\" injected"})
            client.get("/healthz")  # a probe: DEBUG, not worth a line at INFO
            # An open dashboard's files and refreshes: DEBUG too, unless they fail.
            assert client.get("/dashboard/static/dashboard.css").status_code == 200
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert given.headers["x-request-id"] == "orch-42.a"
    assert len(made.headers["x-request-id"]) == 24
    assert forged.headers["x-request-id"] not in ("x\" injected", made.headers["x-request-id"])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "metering.access"]
    assert [(a["method"], a["path"], a["status"], a["request_id"]) for a in access] == [
        ("GET", "/v1/teams/{team_id}", 404, "orch-42.a"),  # no such team yet
        ("GET", "/v1/teams/{team_id}/usage", 200, made.headers["x-request-id"]),
        ("GET", "/v1/teams/{team_id}", 404, forged.headers["x-request-id"]),
    ]
    assert all(isinstance(a["duration_ms"], float) for a in access)
    assert api_keys.finance not in stream.getvalue()
    assert "authorization" not in stream.getvalue().lower()


def test_in_multiprocess_mode_any_process_answers_the_sum_of_all(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    record = ("from metering.observability import observe_job, observe_kill_orders;"
              "observe_job('fold_samples', 0.2); observe_kill_orders(['max_duration'])")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", record], env=env, check=True, cwd=ROOT)
    shown = subprocess.run(
        [sys.executable, "-c", "from metering.observability import render_metrics;"
                               "print(render_metrics().decode())"],
        env=env, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    samples = parse(shown)
    assert value(samples, "metering_job_duration_seconds_count", job="fold_samples") == 2
    assert value(samples, "metering_kill_orders_issued_total", reason="max_duration") == 2


def test_the_worker_serves_its_own_metrics_on_a_port() -> None:
    observability.observe_job("settle_stale", 0.05, failed=True)
    server = observability.start_metrics_server(0, host="127.0.0.1")
    try:
        port = server.server_address[1]
        samples = parse(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    finally:
        server.shutdown()
        server.server_close()
    assert value(samples, "metering_job_failures_total", job="settle_stale") >= 1
    assert value(samples, "metering_job_duration_seconds_count", job="settle_stale") >= 1


def test_a_job_run_skipped_because_the_last_one_still_runs_is_counted() -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from billing.worker import _count_skipped

    release = threading.Event()
    skipped = threading.Event()
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"max_instances": 1})
    # Listeners are called in the order added: counted before the test is told.
    scheduler.add_listener(_count_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    scheduler.add_listener(lambda _: skipped.set(), EVENT_JOB_MAX_INSTANCES)
    scheduler.add_job(release.wait, "interval", seconds=0.05, id="enforce_limits",
                      next_run_time=datetime.now(UTC))
    scheduler.start()
    try:
        assert skipped.wait(30)
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    samples = parse(observability.render_metrics().decode())
    assert value(samples, "metering_job_runs_skipped_total", job="enforce_limits",
                 why="running") >= 1


def test_request_ids_made_here_are_unique_24_hex_characters() -> None:
    from metering.observability import _new_request_id

    made = [_new_request_id() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(len(r) == 24 and int(r, 16) >= 0 for r in made)
