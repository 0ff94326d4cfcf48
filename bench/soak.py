"""Soak: the service for N minutes at a steady ingest rate, with admissions and dashboard
reads mixed in, the background jobs running. Not part of CI.

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 25000] [--admissions 20] [--reads 10]

The fleet: `rate` sandboxes running at once, each sending one `host_stats` a second, each
living `--lifetime` seconds and then killed and replaced by a new execution (so lifecycle
events, execution rows, settles and folds churn as in production). Every minute prints the
events/s acknowledged, p99 latency per endpoint, and the RSS of every process of the
service; at the end, the memory growth after warm-up (goal < 10 %) and how steady p99 was.
"""

from __future__ import annotations

import argparse
import http.client
import os
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
import orjson
import psutil

from bench.common import (
    create_key,
    fresh_database,
    iso,
    log,
    machine,
    now_utc,
    percentile,
    service,
)

SOURCE = "orchestrator/soak/node-1"
# Answers that are the service doing its job (admission refusals included).
OK = frozenset({200, 402, 403, 429})


@dataclass
class Minute:
    """What one minute saw."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    events: int = 0


class Recorder:
    def __init__(self, started: float) -> None:
        self.started = started
        self.lock = threading.Lock()
        self.minutes: dict[int, Minute] = defaultdict(Minute)

    def record(self, endpoint: str, seconds: float, status: int, events: int = 0) -> None:
        """`status` 0: no answer (connection error)."""
        index = int((time.monotonic() - self.started) // 60)
        with self.lock:
            minute = self.minutes[index]
            minute.latencies[endpoint].append(seconds)
            if status in OK:
                minute.events += events
            else:
                minute.errors[endpoint][status] += 1


class Fleet:
    """Sandbox slot j runs execution generation g; it is replaced every `lifetime` seconds,
    slots staggered so the churn is even. Events are built as bytes: at 25,000 a second the
    generator must cost little next to the service it measures."""

    def __init__(self, size: int, lifetime: int, teams: int) -> None:
        self.size = size
        self.lifetime = lifetime
        self.teams = teams

    def _ids(self, j: int, generation: int) -> tuple[str, str, str]:
        return f"soak_team_{j % self.teams}", f"sbx_{j}_{generation}", f"exe_{j}_{generation}"

    def _lifecycle(self, kind: str, j: int, generation: int, when: str, extra: str) -> bytes:
        team, sandbox, execution = self._ids(j, generation)
        return (f'{{"specversion":"1.0","id":"{kind}-{execution}","source":"{SOURCE}",'
                f'"type":"sandbox.lifecycle.{kind}","subject":"{sandbox}","time":"{when}",'
                f'"data":{{"team_id":"{team}","execution_id":"{execution}"{extra}}}}}').encode()

    def second(self, s: int) -> list[bytes]:
        """The events of fleet second `s` (wall time now)."""
        now = now_utc()
        when = iso(now)
        events: list[bytes] = []
        for j in range(self.size):
            age = (s + j) % self.lifetime
            generation = (s + j) // self.lifetime
            if s == 0 or age == 0:
                if s > 0:
                    events.append(self._lifecycle("killed", j, generation - 1, when,
                                                  ',"reason":"request"'))
                events.append(self._lifecycle("created", j, generation, when,
                                              ',"vcpu":2,"memory_mib":1024'))
            team, sandbox, execution = self._ids(j, generation)
            events.append(
                (f'{{"specversion":"1.0","id":"h-{execution}-{s}","source":"{SOURCE}",'
                 f'"type":"sandbox.host_stats","subject":"{sandbox}","time":"{when}",'
                 f'"data":{{"team_id":"{team}","execution_id":"{execution}",'
                 f'"cpu_pct":{(j * 7 + s) % 1000 / 10},"memory_used_mib":{200 + (j + s) % 700}}}}}'
                 ).encode())
        return events


def service_processes(port: int) -> list[psutil.Process]:
    """`metering serve --port <port>` and every process it started."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and "--port" in cmdline and str(port) in cmdline:
            return [process, *process.children(recursive=True)]
    return []


def database_backends(database: str) -> list[psutil.Process]:
    """PostgreSQL backends serving `database` (its shared background processes are not
    attributable to one database and are left out)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith("postgres:") and f" {database} " in f"{cmdline} ":
            found.append(process)
    return found


class CpuMeter:
    """CPU seconds used by a changing set of processes since the last reading (a process
    that appeared counts from its start; one that vanished stops counting)."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}

    def used(self, processes: list[psutil.Process]) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            now = times.user + times.system
            total += max(now - self.last.get(process.pid, 0.0), 0.0)
            self.last[process.pid] = now
        return total


def rss_mib(processes: list[psutil.Process]) -> list[float]:
    sizes = []
    for process in processes:
        try:
            sizes.append(process.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            sizes.append(0.0)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=25_000, help="events/s (= sandboxes running)")
    parser.add_argument("--lifetime", type=int, default=600, help="seconds each execution runs")
    parser.add_argument("--teams", type=int, default=500)
    parser.add_argument("--admissions", type=float, default=20, help="admissions/s")
    parser.add_argument("--reads", type=float, default=10, help="dashboard reads/s")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2, help="API processes")
    parser.add_argument("--warmup", type=float, default=None,
                        help="minutes before the memory baseline (default: a third, at most 5)")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else min(5.0, max(1.0, args.minutes / 3))
    seconds = int(args.minutes * 60)

    url = fresh_database("metering_bench_soak")
    with service(url, workers=args.workers, scheduler=True) as (base, admin):
        host, port_text = base.removeprefix("http://").split(":")
        port = int(port_text)
        ingest = create_key(base, admin, "ingest")
        finance = create_key(base, admin, "finance")
        fin = {"Authorization": f"Bearer {finance}"}
        admission_teams = [f"adm_team_{i}" for i in range(20)]
        for team in admission_teams:
            httpx.put(f"{base}/v1/teams/{team}", json={"plan": "pro"}, headers=fin).raise_for_status()
            httpx.post(f"{base}/v1/teams/{team}/overrides",
                       json={"concurrency": 100_000, "starts_per_second": 10_000}, headers=fin)
        processes = service_processes(port)
        log(f"machine: {machine()}; service processes: {[p.pid for p in processes]}")
        log(f"soak: {args.minutes:g} min at {args.rate:,} events/s ({args.rate:,} sandboxes, "
            f"{args.lifetime} s lives), {args.admissions:g} admissions/s, {args.reads:g} reads/s")

        fleet = Fleet(args.rate, args.lifetime, args.teams)
        started = time.monotonic()
        recorder = Recorder(started)
        # At most ~10 s of batches wait: a service that cannot keep up shows as lag, not as
        # this process's memory growing.
        work: queue.Queue[bytes | None] = queue.Queue(
            maxsize=max(10 * args.rate // args.batch, args.senders * 2))
        lag = [0.0]
        stop = threading.Event()

        def generate() -> None:
            for s in range(seconds):
                due = started + s
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                lag[0] = max(-delay, 0.0)
                events = fleet.second(s)
                for i in range(0, len(events), args.batch):
                    work.put(b"[" + b",".join(events[i:i + args.batch]) + b"]")
            for _ in range(args.senders):
                work.put(None)

        def send() -> None:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            headers = {"Authorization": f"Bearer {ingest}",
                       "Content-Type": "application/cloudevents-batch+json"}
            while (body := work.get()) is not None:
                t = time.perf_counter()
                try:
                    conn.request("POST", "/v1/events", body=body, headers=headers)
                    response = conn.getresponse()
                    answer = response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    status, answer = 0, b""
                events = 0
                if status == 200:
                    parsed = orjson.loads(answer)
                    events = parsed["accepted"] + parsed["duplicates"]
                recorder.record("POST /v1/events", time.perf_counter() - t, status, events)

        def paced(rate: float, name: str, call: object) -> None:
            assert callable(call)
            with httpx.Client(base_url=base, timeout=30) as http_client:
                n = 0
                while not stop.is_set():
                    due = started + n / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    endpoint, status, elapsed = call(http_client, n)
                    recorder.record(endpoint, elapsed, status)
                    n += 1

        def admit(http_client: httpx.Client, n: int) -> tuple[str, int, float]:
            t = time.perf_counter()
            r = http_client.post("/v1/admissions", headers={"Authorization": f"Bearer {ingest}"},
                                 json={"team_id": admission_teams[n % len(admission_teams)],
                                       "sandbox_id": f"adm_sbx_{n}", "vcpu": 2, "memory_mib": 1024})
            return "POST /v1/admissions", r.status_code, time.perf_counter() - t

        def read(http_client: httpx.Client, n: int) -> tuple[str, int, float]:
            team = f"soak_team_{n % args.teams}"
            j = n % args.teams
            choices = [
                ("GET /v1/teams/{id}/usage", f"/v1/teams/{team}/usage", {"granularity": "hour"}),
                ("GET /v1/teams/{id}/balance", f"/v1/teams/{team}/balance", {}),
                ("GET /v1/teams/{id}/sandboxes", f"/v1/teams/{team}/sandboxes",
                 {"state": "running"}),
                ("GET /v1/sandboxes/{id}/metrics", f"/v1/sandboxes/sbx_{j}_0/metrics", {}),
            ]
            endpoint, path, params = choices[n % len(choices)]
            t = time.perf_counter()
            r = http_client.get(path, params=params, headers=fin)
            return endpoint, r.status_code, time.perf_counter() - t

        threads = [threading.Thread(target=generate, daemon=True)]
        threads += [threading.Thread(target=send, daemon=True) for _ in range(args.senders)]
        threads += [threading.Thread(target=paced, args=(args.admissions, "admit", admit), daemon=True),
                    threading.Thread(target=paced, args=(args.reads, "read", read), daemon=True)]
        for t in threads:
            t.start()

        memory: list[tuple[float, float]] = []  # (minute, total RSS MiB) at each minute's end
        p99s: dict[str, list[float]] = defaultdict(list)
        # CPU per event, service and database: what sizing a fleet needs (less sensitive to
        # other load on the machine than throughput is).
        service_cpu, database_cpu = CpuMeter(), CpuMeter()
        service_cpu.used(processes)
        database_cpu.used(database_backends("metering_bench_soak"))
        cpu_per_event: list[tuple[float, float]] = []
        restarts = 0
        for minute in range(int(args.minutes + 0.999)):
            end = started + min((minute + 1) * 60, seconds)
            while time.monotonic() < end:
                time.sleep(min(1.0, max(end - time.monotonic(), 0)))
            # uvicorn's supervisor replaces a worker that stops answering its pings: re-list.
            current = service_processes(port)
            restarts += len({p.pid for p in processes} - {p.pid for p in current})
            processes = current
            sizes = rss_mib(processes)
            memory.append((minute + 1, sum(sizes)))
            with recorder.lock:
                seen = recorder.minutes.get(minute, Minute())
                latencies = {k: list(v) for k, v in seen.latencies.items()}
                errors, events = dict(seen.errors), seen.events
            span = min(60.0, seconds - minute * 60)
            service_used = service_cpu.used(processes)
            database_used = database_cpu.used(database_backends("metering_bench_soak"))
            if events:
                cpu_per_event.append((service_used / events * 1e6, database_used / events * 1e6))
            parts = []
            for endpoint in sorted(latencies):
                p99 = percentile(latencies[endpoint], 0.99) * 1000
                p99s[endpoint].append(p99)
                failed = errors.get(endpoint)
                parts.append(f"{endpoint} p99 {p99:.0f} ms (n={len(latencies[endpoint])}"
                             + (f", errors {dict(failed)}" if failed else "") + ")")
            load = os.getloadavg()[0]
            print(f"[minute {minute + 1}] {events / span:,.0f} events/s (behind schedule "
                  f"{lag[0]:.0f} s); RSS {sum(sizes):.0f} MiB "
                  f"({', '.join(f'{s:.0f}' for s in sizes)}); processes replaced so far {restarts}; "
                  f"load {load:.1f}; CPU per event: "
                  f"service {service_used / max(events, 1) * 1e6:.0f} µs, "
                  f"database {database_used / max(events, 1) * 1e6:.0f} µs; "
                  + "; ".join(parts), flush=True)
        stop.set()
        for t in threads:
            t.join(5)

    baseline = next((rss for m, rss in memory if m >= warmup), memory[0][1])
    final = memory[-1][1]
    growth = (final - baseline) / baseline * 100
    print(f"machine: {machine()}")
    print(f"memory: {baseline:.0f} MiB after {warmup:g} min warm-up -> {final:.0f} MiB at the end: "
          f"{growth:+.1f} % (goal < 10 %)")
    if cpu_per_event:
        steady_cpu = cpu_per_event[int(warmup):] or cpu_per_event
        service_us = sum(c[0] for c in steady_cpu) / len(steady_cpu)
        database_us = sum(c[1] for c in steady_cpu) / len(steady_cpu)
        print(f"CPU per event after warm-up: service (API + jobs) {service_us:.0f} µs, "
              f"database backends {database_us:.0f} µs -> one core takes "
              f"{1e6 / service_us:,.0f} events/s of service work, {1e6 / database_us:,.0f} of database work")
    skip = int(warmup)
    for endpoint, values in sorted(p99s.items()):
        steady = values[skip:] or values
        print(f"p99 {endpoint}: min {min(steady):.0f} / median {percentile(steady, 0.5):.0f} / "
              f"max {max(steady):.0f} ms per minute after warm-up (max/min {max(steady) / max(min(steady), 0.001):.1f})")


if __name__ == "__main__":
    main()
