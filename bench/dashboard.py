"""The dashboard's page data for a team with 100,000 executions this month, over HTTP.

    .venv/bin/python -m bench.dashboard [--executions 100000] [--requests 300]

Executions (created + killed, 1-120 s each, spread over the month so far; 20 still running,
kept alive by a sample every 5 s) are loaded through the real ingest service in-process, as
`bench.balance` does. Then one API process serves the app (with the dashboard), the bench
signs in with the team's key like a browser, and times what the overview polls:
`GET /dashboard/api/teams/{id}/overview` (team, balance, the hourly usage chart of the last
24 hours, running sandboxes with live cost), and the same for the 30-day daily chart and the
HTML page. Goal: the page data at p95 <= 300 ms. Prints p50/p95/p99.
"""

from __future__ import annotations

import argparse
import http.client
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg

from bench.balance import load
from bench.common import (
    ROOT,
    create_key,
    free_port,
    fresh_database,
    iso,
    log,
    machine,
    now_utc,
    percentile,
    serve_until_ready,
    service,
)

GOAL_MS = 300.0


def app() -> Any:
    """The app as `metering serve` builds it, with the dashboard's routes (included here
    until the app includes them itself)."""
    from billing.app import app_from_environment
    from billing.dashboard.endpoints import router

    application = app_from_environment()
    if not any(getattr(r, "path", "").startswith("/dashboard") for r in application.routes):
        application.include_router(router)
    return application


@contextmanager
def dashboard_server(database_url: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "METERING_RESOLVED_DATABASE_URL": database_url,
           "METERING_RUN_SCHEDULER": "false", "METERING_LOG_LEVEL": "WARNING"}
    command = [str(ROOT / ".venv/bin/python"), "-m", "uvicorn", "bench.dashboard:app",
               "--factory", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with serve_until_ready(command, env, port) as base:
        yield base


def keep_alive(base: str, ingest: str, team: str, stop: threading.Event) -> None:
    """A sample every 5 s for the 20 running executions, as their orchestrator would send."""
    n = 0
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ingest}"}) as client:
        while not stop.wait(5):
            n += 1
            moment = iso(now_utc())
            client.post("/v1/events", json=[{
                "specversion": "1.0", "id": f"alive-{i}-{n}", "source": "bench",
                "subject": f"sbx_{i}", "type": "sandbox.host_stats", "time": moment,
                "data": {"team_id": team, "execution_id": f"exe_{i}", "cpu_pct": 50,
                         "memory_used_mib": 300}} for i in range(20)])


def sign_in(host: str, port: int, key: str) -> str:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/dashboard/sign-in", body=urlencode({"key": key}),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    cookie = response.getheader("set-cookie") or ""
    if response.status != 303 or not cookie:
        raise RuntimeError(f"sign-in failed: {response.status}")
    return cookie.split(";", 1)[0]


def timed(host: str, port: int, path: str, cookie: str, requests: int
          ) -> tuple[list[float], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    latencies: list[float] = []
    body = b""
    for i in range(requests + 10):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
        if i >= 10:  # warm-up
            latencies.append(time.perf_counter() - t0)
    return latencies, body


def report(label: str, latencies: list[float]) -> float:
    p95 = percentile(latencies, 0.95) * 1000
    print(f"  {label}: {len(latencies)} reads, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p95 {p95:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
    return p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    url = fresh_database("metering_bench_dashboard")
    team = "team_big"
    started = time.perf_counter()
    with service(url, workers=1) as (base, admin):
        finance = create_key(base, admin, "finance")
        team_key = create_key(base, admin, "team", team)
        ingest = create_key(base, admin, "ingest")
        httpx.put(f"{base}/v1/teams/{team}",
                  json={"plan": "hobby", "effective_at": iso(now_utc() - timedelta(days=40))},
                  headers={"Authorization": f"Bearer {finance}"}).raise_for_status()
    load(url, team, args.executions)
    # A running service's autovacuum analyzes the freshly loaded tables within a minute or
    # so; do it now rather than time plans made on empty-table statistics.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    log(f"loaded in {time.perf_counter() - started:.0f} s")
    with dashboard_server(url) as base:
        host, port_text = base.removeprefix("http://").split(":")
        port = int(port_text)
        stop = threading.Event()
        alive = threading.Thread(target=keep_alive, args=(base, ingest, team, stop), daemon=True)
        alive.start()
        try:
            cookie = sign_in(host, port, team_key)
            print(f"machine: {machine()}")
            print(f"dashboard of a team with {args.executions:,} executions this month "
                  "(20 running), one API process, over HTTP with the session cookie:")
            data, body = timed(host, port, f"/dashboard/api/teams/{team}/overview", cookie,
                               args.requests)
            p95 = report("page data, last 24 h hourly (what the page polls)", data)
            month, _ = timed(host, port, f"/dashboard/api/teams/{team}/overview?range=30d",
                             cookie, args.requests // 3)
            report("page data, last 30 days daily", month)
            page, _ = timed(host, port, f"/dashboard/teams/{team}", cookie, args.requests // 3)
            report("HTML overview page", page)
            executions, _ = timed(host, port, f"/dashboard/teams/{team}/executions", cookie,
                                  args.requests // 3)
            report("executions page (50 newest ended)", executions)
            search, _ = timed(host, port, f"/dashboard/teams/{team}/executions?q=sbx_9999",
                              cookie, args.requests // 3)
            report("executions page, search by sandbox id prefix", search)
        finally:
            stop.set()
    verdict = "meets" if p95 <= GOAL_MS else "MISSES"
    print(f"page data p95 {p95:.1f} ms {verdict} the goal of {GOAL_MS:.0f} ms; "
          f"answer size {len(body):,} bytes")


if __name__ == "__main__":
    main()
