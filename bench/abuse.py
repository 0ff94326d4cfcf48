"""Admissions while one team key abuses the service: the orchestrator's path keeps its latency.

    .venv/bin/python -m bench.abuse [--rate 200] [--seconds 25] [--readers 300] [--slow 2000]

One run, two phases against one `metering serve` (2 API processes, the scheduler in-process):
1. baseline: `bench.admission`'s load (its connections opened first) at `--rate` admissions/s;
2. abuse: the same load while, from another process, one team key sends `--readers`
   concurrent year-long hourly usage reads (each client retrying after `Retry-After`, as a
   well-behaved client does) and `--slow` connections trickle request headers (reopened
   when the server closes them), and /healthz is probed every 50 ms.
Prints admission p99 of both phases, admission errors, /healthz p99, skipped runs of the
enforcement sweep (`metering_job_runs_skipped_total`) and the share of abusive reads answered
`429`. Goals: abuse p99 <= 2 x baseline and <= 50 ms, no admission error, /healthz p99
<= 50 ms, no sweep skipped. About 2.5 minutes in all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.admission import offer
from bench.common import (
    CpuMeter,
    create_key,
    fresh_database,
    iso,
    machine,
    now_utc,
    percentile,
    postgres_processes,
    service,
    service_processes,
)

USAGE_PATH = ("/v1/teams/team_abuse/usage?start=2026-01-01T00:00:00Z"
              "&end=2026-12-31T00:00:00Z&granularity=hour")


async def _response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """Status and Retry-After (0 when absent) of one response; its body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, retry_after = 0, 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"retry-after":
            retry_after = int(value)
    await reader.readexactly(length)
    return status, retry_after


async def _abuse(host: str, port: int, team_key: str, readers: int, slow: int,
                 seconds: float, out: Any) -> None:  # float-ok: seconds
    stop_at = time.monotonic() + seconds
    statuses: dict[int, int] = {}
    open_slow = [0]

    async def reader_client() -> None:
        request = (f"GET {USAGE_PATH} HTTP/1.1\r\nHost: {host}\r\n"
                   f"Authorization: Bearer {team_key}\r\n\r\n").encode()
        while time.monotonic() < stop_at:
            try:
                r, w = await asyncio.open_connection(host, port)
                while time.monotonic() < stop_at:
                    w.write(request)
                    status, retry_after = await _response(r)
                    statuses[status] = statuses.get(status, 0) + 1
                    if retry_after:
                        await asyncio.sleep(retry_after)
                w.close()
            except (OSError, asyncio.IncompleteReadError):
                statuses[0] = statuses.get(0, 0) + 1
                await asyncio.sleep(1)

    async def slow_client(n: int) -> None:
        await asyncio.sleep(n / 400)  # ramp up: 400 new connections a second
        while time.monotonic() < stop_at:
            try:
                r, w = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(1)
                continue
            open_slow[0] += 1
            try:
                w.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n".encode())
                while time.monotonic() < stop_at:
                    w.write(b"X-Slow: 1\r\n")  # headers that never end
                    await w.drain()
                    try:
                        if await asyncio.wait_for(r.read(1), timeout=3) == b"":
                            break  # the server closed it: open another
                    except TimeoutError:
                        pass
            except OSError:
                pass
            finally:
                open_slow[0] -= 1
                w.close()

    async def count_slow() -> None:
        peak = 0
        while time.monotonic() < stop_at:
            peak = max(peak, open_slow[0])
            await asyncio.sleep(0.5)
        out.put(("slow_peak", peak))

    await asyncio.gather(*(reader_client() for _ in range(readers)),
                         *(slow_client(n) for n in range(slow)), count_slow())
    out.put(("reads", statuses))


def abuse_process(host: str, port: int, team_key: str, readers: int, slow: int,
                  seconds: float, nice: int, out: Any) -> None:  # float-ok: seconds
    # The abuser's own CPU is the attacker's machine, not the service's: on these two cores
    # it runs below the service and the admission generator, and the answers it counts show
    # it still sends its full load.
    os.nice(nice)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_abuse(host, port, team_key, readers, slow, seconds, out))


async def admissions_with_health(host: str, port: int, ingest: str, teams: list[str],
                                 rate: int, seconds: int, clients: int,
                                 ) -> tuple[list[float], dict[str, dict[int, int]], list[float]]:
    health: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        r, w = await asyncio.open_connection(host, port)
        request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        while not done.is_set():
            t0 = time.perf_counter()
            w.write(request)
            await _response(r)
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05)
        w.close()

    prober = asyncio.create_task(probe())
    by_kind: dict[str, list[float]] = {}
    latencies, statuses, _ = await offer(host, port, ingest, teams, rate, seconds, clients,
                                         by_kind)
    print("p99 by kind: " + ", ".join(
        f"{kind} {percentile(values, 0.99) * 1000:.1f} ms (n={len(values)})"
        for kind, values in sorted(by_kind.items())), flush=True)
    done.set()
    await prober
    return latencies, statuses, health


def keep_running(base: str, ingest: str, sandboxes: int, stop: threading.Event) -> None:
    """The race team's running sandboxes send `host_stats` every 10 s, as live sandboxes do,
    so they never go stale (60 s) and free their slots in the middle of the run."""
    headers = {"Authorization": f"Bearer {ingest}"}
    beat = 0
    while not stop.wait(10):
        beat += 1
        moment = iso(now_utc() - timedelta(seconds=1))
        samples = [{"specversion": "1.0", "id": f"hs{i}-{beat}", "source": "bench",
                    "type": "sandbox.host_stats", "subject": f"race_run_{i}", "time": moment,
                    "data": {"team_id": "team_race", "execution_id": f"race_exe_{i}",
                             "cpu_pct": 50.0}} for i in range(sandboxes)]
        with contextlib.suppress(httpx.HTTPError):  # the next beat comes well within 60 s
            httpx.post(f"{base}/v1/events", content=orjson.dumps(samples), headers=headers,
                       timeout=30)


def skipped_runs(base: str) -> dict[str, int]:
    samples = [s for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
               for s in family.samples if s.name == "metering_job_runs_skipped_total"]
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.labels["job"]] = counts.get(s.labels["job"], 0) + int(s.value)
    return counts


def admission_buckets(base: str) -> dict[float, float]:
    """The service's own admission latency histogram (cumulative counts by upper bound),
    summed over its API processes: the time from the request's arrival to its answer."""
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for s in family.samples:
            if (s.name == "metering_http_request_duration_seconds_bucket"
                    and s.labels.get("route") == "/v1/admissions"):
                bound = float(s.labels["le"])
                counts[bound] = counts.get(bound, 0) + s.value
    return counts


def served_p99(before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket the service's own p99 falls in, from two readings of its histogram."""
    delta = {b: after.get(b, 0) - before.get(b, 0) for b in sorted(after)}
    total = max(delta.values(), default=0)
    for bound, count in delta.items():
        if total and count >= 0.99 * total:
            return f"<= {bound * 1000:g} ms" if bound != float("inf") else "> 10 s"
    return "n/a"


def errors_of(statuses: dict[str, dict[int, int]]) -> int:
    """Fleet admissions not admitted (every fleet team has room), race answers not 200/429."""
    fleet = sum(n for code, n in statuses["fleet"].items() if code != 200)
    race = sum(n for code, n in statuses["race"].items() if code not in (200, 429))
    return fleet + race


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=25, help="length of each phase")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--readers", type=int, default=300)
    parser.add_argument("--slow", type=int, default=2000)
    parser.add_argument("--abuser-nice", type=int, default=10,
                        help="CPU priority of the abusive client (0: the same as the rest)")
    args = parser.parse_args()
    started = time.monotonic()
    url = fresh_database("metering_bench_abuse")
    with service(url, workers=2, scheduler=True) as (base, admin):
        ingest = create_key(base, admin, "ingest")
        finance = create_key(base, admin, "finance")
        fin = {"Authorization": f"Bearer {finance}"}
        teams = [f"team_{i}" for i in range(20)]
        for team in teams:
            httpx.put(f"{base}/v1/teams/{team}", json={"plan": "pro"}, headers=fin).raise_for_status()
            httpx.post(f"{base}/v1/teams/{team}/overrides",
                       json={"concurrency": 100_000, "starts_per_second": 10_000}, headers=fin)
        httpx.put(f"{base}/v1/teams/team_race", json={"plan": "hobby"}, headers=fin)
        httpx.post(f"{base}/v1/teams/team_race/overrides", json={"starts_per_second": 10_000},
                   headers=fin)
        httpx.put(f"{base}/v1/teams/team_abuse", json={"plan": "pro"}, headers=fin)
        now = now_utc()
        created = [{"specversion": "1.0", "id": f"c{i}", "source": "bench",
                    "type": "sandbox.lifecycle.created", "subject": f"race_run_{i}",
                    "time": iso(now - timedelta(seconds=1)),
                    "data": {"team_id": "team_race", "execution_id": f"race_exe_{i}", "vcpu": 1,
                             "memory_mib": 512}} for i in range(19)]
        # The abusive team has a little usage of its own, so its reads do real work.
        for day in range(1, 30):
            start = now - timedelta(days=day)
            created += [
                {"specversion": "1.0", "id": f"a{day}", "source": "bench",
                 "type": "sandbox.lifecycle.created", "subject": f"abuse_{day}",
                 "time": iso(start), "data": {"team_id": "team_abuse", "execution_id":
                                              f"abuse_exe_{day}", "vcpu": 2, "memory_mib": 1024}},
                {"specversion": "1.0", "id": f"k{day}", "source": "bench",
                 "type": "sandbox.lifecycle.killed", "subject": f"abuse_{day}",
                 "time": iso(start + timedelta(hours=3)),
                 "data": {"team_id": "team_abuse", "execution_id": f"abuse_exe_{day}"}}]
        httpx.post(f"{base}/v1/events", content=orjson.dumps(created),
                   headers={"Authorization": f"Bearer {ingest}"}).raise_for_status()
        team_key = create_key(base, admin, "team", "team_abuse")
        stop_beats = threading.Event()
        beats = threading.Thread(target=keep_running, args=(base, ingest, 19, stop_beats),
                                 daemon=True)
        beats.start()
        host, port = base.removeprefix("http://").split(":")

        served = [admission_buckets(base)]
        calm = asyncio.run(admissions_with_health(
            host, int(port), ingest, teams, args.rate, args.seconds, args.clients))
        served.append(admission_buckets(base))
        skipped_before = skipped_runs(base)

        out: Any = multiprocessing.Queue()
        abuser = multiprocessing.Process(target=abuse_process, args=(
            host, int(port), team_key, args.readers, args.slow, args.seconds + 10,
            args.abuser_nice, out))
        abuser.start()
        time.sleep(8)  # the slow connections ramp up and the readers saturate first
        serve, api = service_processes(int(port))
        backends, background = postgres_processes("metering_bench_abuse")
        groups = {"service": [p for p in [serve, *api] if p is not None],
                  "database": backends + background,
                  "abuser": [psutil.Process(abuser.pid)], "bench": [psutil.Process()]}
        meters = {name: CpuMeter() for name in groups}
        for name, processes in groups.items():
            meters[name].used(processes)
        phase_started = time.monotonic()
        loaded = asyncio.run(admissions_with_health(
            host, int(port), ingest, teams, args.rate, args.seconds, args.clients))
        phase = time.monotonic() - phase_started
        served.append(admission_buckets(base))
        cpu = {name: meters[name].used(processes) for name, processes in groups.items()}
        abuser.join(60)
        results = dict(out.get() for _ in range(2))
        skipped_after = skipped_runs(base)
        stop_beats.set()
        beats.join()

    calm_p99 = percentile(calm[0], 0.99) * 1000
    loaded_p99 = percentile(loaded[0], 0.99) * 1000
    health_p99 = percentile(loaded[2], 0.99) * 1000
    reads: dict[int, int] = results["reads"]
    total_reads = sum(reads.values())
    sweep_skipped = (skipped_after.get("enforce_limits", 0)
                     - skipped_before.get("enforce_limits", 0))
    print(f"machine: {machine()}; 2 API processes, scheduler in-process")
    print(f"admissions at {args.rate}/s for {args.seconds} s per phase, {args.clients} connections")
    print(f"admission p99: {calm_p99:.1f} ms without abuse, {loaded_p99:.1f} ms with abuse "
          f"({loaded_p99 / calm_p99:.2f} x); p50 {percentile(loaded[0], 0.5) * 1000:.1f} ms")
    print(f"admission p99 as the service timed it (histogram bucket): "
          f"{served_p99(served[0], served[1])} without abuse, "
          f"{served_p99(served[1], served[2])} with abuse")
    print(f"admission errors: {errors_of(calm[1]) + errors_of(loaded[1])} "
          f"(answers without abuse {calm[1]}, with abuse {loaded[1]})")
    print(f"race team (19 of 20 running, kept alive): admitted "
          f"{calm[1]['race'].get(200, 0)} without abuse, {loaded[1]['race'].get(200, 0)} with "
          "(one lease in all: it holds its slot past the run)")
    print(f"/healthz p99 with abuse: {health_p99:.1f} ms ({len(loaded[2])} probes)")
    print(f"slow connections open at peak: {results['slow_peak']}")
    print(f"abusive reads ({args.readers} concurrent, one team key): {total_reads} answers "
          f"{dict(sorted(reads.items()))}; answered 429: "
          f"{100 * reads.get(429, 0) / max(total_reads, 1):.1f} %")
    print(f"CPU during the abuse phase ({phase:.0f} s, {2 * phase:.0f} CPU-s on 2 cores): "
          + ", ".join(f"{name} {used:.1f} s" for name, used in cpu.items())
          + f" (abuser at nice {args.abuser_nice})")
    print(f"enforcement sweep runs skipped during the run: {sweep_skipped} "
          f"(all jobs: {skipped_after})")
    goals = (loaded_p99 <= 2 * calm_p99 and loaded_p99 <= 50
             and errors_of(calm[1]) + errors_of(loaded[1]) == 0 and health_p99 <= 50
             and sweep_skipped == 0)
    print(f"goals met: {goals}; total run {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
