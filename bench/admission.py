"""Admission latency under concurrency: 50 clients at 200 admissions/s for 30 s over HTTP.

    .venv/bin/python -m bench.admission [--rate 200] [--seconds 30] [--clients 50]

Admissions spread over 20 teams (each with limits raised so they are admitted) plus a race
team whose concurrency is 20 with 19 running: exactly one of its requests may be admitted.
Prints p50/p95/p99 latency and the race result. The load comes from one asyncio loop (not 50
threads), so that on a 2-core machine the generator's own CPU does not become the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    create_key,
    fresh_database,
    iso,
    machine,
    now_utc,
    percentile,
    read_response,
    service,
)


async def offer(
    host: str, port: int, ingest: str, teams: list[str], rate: int, seconds: int, clients: int,
    by_kind: dict[str, list[float]] | None = None,
) -> tuple[list[float], dict[str, dict[int, int]], float]:
    """`clients` keep-alive connections, each taking the next admission when it is due (one
    every 1/rate s); a connection busy past a due time sends late (the latency still counts
    from the send). One asyncio loop, so the load generator needs little CPU of its own."""
    total = rate * seconds
    start = time.perf_counter() + 0.5
    latencies: list[float] = []
    statuses: dict[str, dict[int, int]] = {"fleet": {}, "race": {}}
    counter = iter(range(total))
    head = (f"POST /v1/admissions HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {ingest}\r\nContent-Type: application/json\r\n")

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        for n in counter:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            race = n % 100 == 0
            team = "team_race" if race else teams[n % len(teams)]
            body = orjson.dumps({"team_id": team, "sandbox_id": f"s{n}", "vcpu": 1,
                                 "memory_mib": 512})
            t0 = time.perf_counter()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status, _ = await read_response(reader)
            latencies.append(time.perf_counter() - t0)
            if by_kind is not None:
                by_kind.setdefault("race" if race else "fleet", []).append(latencies[-1])
            bucket = statuses["race" if race else "fleet"]
            bucket[status] = bucket.get(status, 0) + 1
        writer.close()

    wall = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, statuses, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--teams", type=int, default=20,
                        help="teams the fleet's admissions spread over (each gets rate/teams per s)")
    args = parser.parse_args()
    url = fresh_database("metering_bench_admission")
    with service(url, workers=2) as (base, admin):
        ingest = create_key(base, admin, "ingest")
        finance = create_key(base, admin, "finance")
        fin = {"Authorization": f"Bearer {finance}"}
        teams = [f"team_{i}" for i in range(args.teams)]
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
        latencies, statuses, wall = asyncio.run(offer(
            host, int(port), ingest, teams, args.rate, args.seconds, args.clients))
        samples = [s for family in text_string_to_metric_families(
            httpx.get(f"{base}/metrics").text) for s in family.samples]
        paths = {s.labels["path"]: int(s.value) for s in samples
                 if s.name == "metering_admission_paths_total"}
        # The service's own time per admission (from the request's arrival to its answer).
        buckets = sorted((float(s.labels["le"]), s.value) for s in samples
                         if s.name == "metering_admission_duration_seconds_bucket")
    print(f"machine: {machine()}")
    print(f"{len(latencies)} admissions in {wall:.1f} s ({len(latencies) / wall:.0f}/s offered {args.rate}/s) "
          f"from {args.clients} clients, 2 API processes")
    print(f"latency: p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p95 {percentile(latencies, 0.95) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    print(f"fleet answers: {statuses['fleet']}; race team (19 of 20 running): {statuses['race']} "
          f"-> admitted exactly one: {statuses['race'].get(200, 0) == 1}")
    total_in = buckets[-1][1] if buckets else 0
    served = ", ".join(f"<= {le * 1000:g} ms: {100 * n / total_in:.1f} %"
                       for le, n in buckets if le <= 0.1) if total_in else "-"
    print(f"time in the service (its histogram): {served}")
    print(f"answered on the event loop / by a worker thread / fallback after database trouble: "
          f"{paths.get('loop', 0)} / {paths.get('thread', 0)} / {paths.get('fallback', 0)}")


if __name__ == "__main__":
    main()
