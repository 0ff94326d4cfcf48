"""The balance read for a team with 100,000 executions this month.

    .venv/bin/python -m bench.balance [--executions 100000] [--requests 500]

Executions (created + killed, 1-120 s each, spread over the month so far) are loaded through
the real ingest service in-process, with 20 still running; then GET /v1/teams/{id}/balance is
timed over HTTP against `metering serve`. Prints p50/p95/p99.
"""

from __future__ import annotations

import argparse
import http.client
import random
import time
from datetime import timedelta

import httpx
import psycopg

from bench.common import create_key, fresh_database, iso, log, machine, now_utc, percentile, service
from billing.app import wire_billing
from metering import migrate
from metering.core.clock import month_start
from metering.db import make_engine, make_sessionmaker, transaction
from metering.ingest import service as ingest


def load(url: str, team: str, executions: int) -> None:
    wire_billing()
    engine = make_engine(url, pool_size=2)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    now = now_utc()
    start = month_start(now)
    span = max((now - start).total_seconds() - 300, 3600)
    rng = random.Random(7)
    batch: list[dict] = []

    def flush() -> None:
        with transaction(sessions) as session:
            result = ingest.ingest(session, batch, now_utc(), 300)
            assert result.rejected == 0, result.errors[:2]
        batch.clear()

    for i in range(executions):
        begin = start + timedelta(seconds=rng.uniform(0, span))
        common = {"team_id": team, "execution_id": f"exe_{i}"}
        batch.append({"specversion": "1.0", "id": f"c{i}", "source": "bench", "subject": f"sbx_{i}",
                      "type": "sandbox.lifecycle.created", "time": iso(begin),
                      "data": {**common, "vcpu": rng.choice([1, 2, 4]), "memory_mib": rng.choice([512, 1024, 2048])}})
        if i >= 20:  # the first 20 keep running
            batch.append({"specversion": "1.0", "id": f"k{i}", "source": "bench", "subject": f"sbx_{i}",
                          "type": "sandbox.lifecycle.killed",
                          "time": iso(begin + timedelta(seconds=rng.uniform(1, 120))),
                          "data": {**common, "reason": "request"}})
        else:
            batch.append({"specversion": "1.0", "id": f"h{i}", "source": "bench", "subject": f"sbx_{i}",
                          "type": "sandbox.host_stats", "time": iso(now - timedelta(seconds=1)),
                          "data": common})
        if len(batch) >= 5000:
            flush()
            if i % 20000 < 2500:
                log(f"{i} executions loaded")
    if batch:
        flush()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    url = fresh_database("metering_bench_balance")
    team = "team_big"
    started = time.perf_counter()
    with service(url, workers=1) as (base, admin):
        finance = create_key(base, admin, "finance")
        httpx.put(f"{base}/v1/teams/{team}", json={"plan": "hobby"},
                  headers={"Authorization": f"Bearer {finance}"}).raise_for_status()
        load(url, team, args.executions)
        # A running service has autovacuum analyze a table that just grew by 100,000 rows;
        # time the reads against the plans PostgreSQL would then choose.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        log(f"loaded in {time.perf_counter() - started:.0f} s")
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Authorization": f"Bearer {finance}"}
        latencies = []
        body = b""
        for i in range(args.requests + 20):
            t0 = time.perf_counter()
            conn.request("GET", f"/v1/teams/{team}/balance", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if i >= 20:  # warm-up
                latencies.append(time.perf_counter() - t0)
    print(f"machine: {machine()}")
    print(f"balance of a team with {args.executions:,} executions this month (20 running): "
          f"{args.requests} reads, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
    print(f"last answer: {body.decode()}")


if __name__ == "__main__":
    main()
