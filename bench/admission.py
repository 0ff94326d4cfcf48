"""Admission latency under concurrency: 50 clients at 200 admissions/s for 30 s over HTTP.

    .venv/bin/python -m bench.admission [--rate 200] [--seconds 30] [--clients 50]

Admissions spread over 20 teams (each with limits raised so they are admitted) plus a race
team whose concurrency is 20 with 19 running: exactly one of its requests may be admitted.
Prints p50/p95/p99 latency and the race result.
"""

from __future__ import annotations

import argparse
import http.client
import threading
import time
from datetime import timedelta

import httpx
import orjson

from bench.common import (
    create_key,
    fresh_database,
    iso,
    machine,
    now_utc,
    percentile,
    service,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    url = fresh_database("metering_bench_admission")
    with service(url, workers=2) as (base, admin):
        ingest = create_key(base, admin, "ingest")
        finance = create_key(base, admin, "finance")
        fin = {"Authorization": f"Bearer {finance}"}
        teams = [f"team_{i}" for i in range(20)]
        for team in teams:
            httpx.put(f"{base}/v1/teams/{team}", json={"plan": "pro"}, headers=fin).raise_for_status()
            httpx.post(f"{base}/v1/teams/{team}/overrides",
                       json={"concurrency": 100_000, "starts_per_second": 10_000}, headers=fin)
        httpx.put(f"{base}/v1/teams/team_race", json={"plan": "hobby"}, headers=fin)
        httpx.post(f"{base}/v1/teams/team_race/overrides", json={"starts_per_second": 10_000}, headers=fin)
        now = now_utc()
        created = [{"specversion": "1.0", "id": f"c{i}", "source": "bench", "type": "sandbox.lifecycle.created",
                    "subject": f"race_run_{i}", "time": iso(now - timedelta(seconds=1)),
                    "data": {"team_id": "team_race", "execution_id": f"race_exe_{i}", "vcpu": 1, "memory_mib": 512}}
                   for i in range(19)]
        httpx.post(f"{base}/v1/events", content=orjson.dumps(created),
                   headers={"Authorization": f"Bearer {ingest}"}).raise_for_status()

        host, port = base.removeprefix("http://").split(":")
        total = args.rate * args.seconds
        interval = 1.0 / args.rate
        start = time.perf_counter() + 0.5
        latencies: list[float] = []
        statuses: dict[str, dict[int, int]] = {"fleet": {}, "race": {}}
        lock = threading.Lock()
        counter = iter(range(total))

        def client() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            headers = {"Authorization": f"Bearer {ingest}", "Content-Type": "application/json"}
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                due = start + n * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                race = n % 100 == 0
                team = "team_race" if race else teams[n % len(teams)]
                body = orjson.dumps({"team_id": team, "sandbox_id": f"s{n}", "vcpu": 1, "memory_mib": 512})
                t0 = time.perf_counter()
                conn.request("POST", "/v1/admissions", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    bucket = statuses["race" if race else "fleet"]
                    bucket[response.status] = bucket.get(response.status, 0) + 1

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        wall = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall
    print(f"machine: {machine()}")
    print(f"{len(latencies)} admissions in {wall:.1f} s ({len(latencies) / wall:.0f}/s offered {args.rate}/s) "
          f"from {args.clients} clients, 2 API processes")
    print(f"latency: p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p95 {percentile(latencies, 0.95) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    print(f"fleet answers: {statuses['fleet']}; race team (19 of 20 running): {statuses['race']} "
          f"-> admitted exactly one: {statuses['race'].get(200, 0) == 1}")


if __name__ == "__main__":
    main()
