"""Soak: the service for N minutes at a scheduled ingest rate, with admissions and dashboard
reads mixed in and every background job running. Not part of CI.

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 25000] [--admissions 20] [--reads 10]
    .venv/bin/python -m bench.soak --steps 10000,15000,20000,25000 --step-minutes 5

The fleet: `rate` sandboxes running at once, each sending one `host_stats` a second, each
living `--lifetime` seconds and then killed and replaced by a new execution (so lifecycle
events, execution rows, settles and folds churn as in production). With `--steps` the fleet
grows step by step (one service, one database) to find the highest rate that holds.

What makes the figures trustworthy:
- the load comes from its own processes (`--generators` for ingest, one for admissions and
  reads), each an asyncio loop with keep-alive connections; a second's batches are built
  before it is due, so building them never delays a send;
- every request has a scheduled send time (a second's batches spread evenly over it);
  latency is timed from that time, so a request that waited for a free connection, or behind
  a slow service, shows its wait; a batch still unsent 60 s after its time is dropped and
  counted;
- "offered" is the scheduled rate, "acknowledged" what the service answered 200 for, by the
  minute the answer came; a minute holds when acknowledged is within 2 % of offered;
- CPU per acknowledged event is printed all in (API processes, the scheduler's jobs, the
  database's backends and its background writers), and beside it the generators' own CPU;
- skipped job runs come from the service's own metric (`metering_job_runs_skipped_total`),
  deadlocks from PostgreSQL's statistics of the database.
- the admissions-and-reads client runs at real-time priority where the kernel allows it
  (`--client-priority`), as a client on its own machine would wake when due, and prints how
  late it sent (`client: sent late by`); the service runs in a session of its own, so that
  where the kernel groups processes by session for scheduling it does not share a group
  with the load generators.

Every minute prints offered and acknowledged events/s, p99 per endpoint (from the scheduled
send), CPU per event, RSS per service process and skipped runs; at the end, the memory growth
of each process after warm-up (goal < 10 %), how steady p99 was, and per step whether it held.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import psutil
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    CpuMeter,
    create_key,
    fresh_database,
    log,
    machine,
    percentile,
    postgres_processes,
    service,
    service_processes,
)

DATABASE = "metering_bench_soak"
SOURCE = "orchestrator/soak/node-1"
INGEST = "POST /v1/events"
# Answers that are the service doing its job (admission refusals included).
OK = frozenset({200, 402, 403, 429})
BLOCK = 1000  # sandboxes per ingest batch
AHEAD_S = 2.0  # a second's batches are built this long before they are due
GIVE_UP_S = 60.0  # a batch this late is dropped (counted) instead of sent
HELD = 0.98
# The machine's floor, measured under the same load: what a request that does nothing (or a
# database round trip that does nothing) waits for CPU alone.
FLOOR_HTTP = "floor: GET /healthz"
FLOOR_DB = "floor: PostgreSQL SELECT 1"
FLOOR_RATE = 10.0
# How late the admissions-and-reads client sent its requests (from their scheduled time): its
# own share of the figures above, which a client on its own machine would not add.
CLIENT_LATE = "client: sent late by"
JOBS_SHOWN = frozenset({"enforce_limits", "refresh_liveness", "fold_samples", "settle_stale",
                        "fold_rollup_deltas", "deliver_webhooks"})


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Rates in force: step i runs `rates[i]` sandboxes for `step_s` seconds."""

    rates: tuple[int, ...]
    step_s: int
    lifetime: int
    teams: int

    @property
    def seconds(self) -> int:
        return self.step_s * len(self.rates)

    def size(self, s: int) -> int:
        if s < 0:
            return 0
        return self.rates[min(s // self.step_s, len(self.rates) - 1)]

    def step_of_minute(self, minute: int) -> int:
        return min(minute * 60 // self.step_s, len(self.rates) - 1)


def iso(moment: float) -> str:
    d = datetime.fromtimestamp(moment, UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


class Fleet:
    """Sandbox slot j runs execution generation g, replaced every `lifetime` seconds (slots
    staggered so the churn is even). Events are built as bytes from pieces made once."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def _ids(self, j: int, generation: int) -> tuple[str, str, str]:
        return (f"soak_team_{j % self.plan.teams}", f"sbx_{j}_{generation}",
                f"exe_{j}_{generation}")

    def _lifecycle(self, kind: str, j: int, generation: int, when: str, extra: str) -> bytes:
        team, sandbox, execution = self._ids(j, generation)
        return (f'{{"specversion":"1.0","id":"{kind}-{execution}","source":"{SOURCE}",'
                f'"type":"sandbox.lifecycle.{kind}","subject":"{sandbox}","time":"{when}",'
                f'"data":{{"team_id":"{team}","execution_id":"{execution}"{extra}}}}}').encode()

    def batch(self, block: int, s: int, when: str) -> list[bytes]:
        """The events of sandboxes [block * BLOCK, +BLOCK) in fleet second `s`."""
        lifetime = self.plan.lifetime
        size, before = self.plan.size(s), self.plan.size(s - 1)
        events: list[bytes] = []
        for j in range(block * BLOCK, min((block + 1) * BLOCK, max(size, before))):
            generation = (s + j) // lifetime
            if j >= size:  # the fleet shrank: this slot's sandbox stops
                events.append(self._lifecycle("killed", j, (s - 1 + j) // lifetime, when,
                                              ',"reason":"request"'))
                continue
            if j >= before or (s + j) % lifetime == 0:
                if j < before:
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


# --------------------------------------------------------------------------- load processes

# (endpoint, scheduled send, answered at, status (0: no answer, -1: dropped), events)
Record = tuple[str, float, float, int, int]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


class Connection:
    """One keep-alive connection, reopened after any failure."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """A connection the server closed while it sat idle (keep-alive timeout) fails on
        reuse before the server read anything: that request is sent once more on a new one."""
        for _ in range(2):
            reused = self.streams is not None
            try:
                if self.streams is None:
                    self.streams = await asyncio.open_connection(self.host, self.port)
                reader, writer = self.streams
                writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                return await asyncio.wait_for(read_response(reader), 120)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                if self.streams is not None:
                    self.streams[1].close()
                self.streams = None
                if not reused:
                    break
        return 0, b""


async def _sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _forward(records: list[Record], out: Any, done: asyncio.Event) -> None:
    while not done.is_set():
        await asyncio.sleep(1)
        if records:
            chunk = records[:]
            records.clear()
            out.put(chunk)


def ingest_process(index: int, generators: int, plan: Plan, start: float, host: str,
                   port: int, key: str, connections: int, out: Any) -> None:
    """Offers the batches of blocks index, index + generators, … on schedule."""
    fleet = Fleet(plan)
    records: list[Record] = []
    head = (f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/cloudevents-batch+json\r\n").encode()
    most_blocks = -(-max(plan.rates) // BLOCK)

    async def main() -> None:
        work: asyncio.Queue[tuple[float, bytes, int] | None] = asyncio.Queue()
        done = asyncio.Event()

        async def build() -> None:
            for s in range(plan.seconds):
                await _sleep_until(start + s - AHEAD_S)
                blocks = -(-max(plan.size(s), plan.size(s - 1)) // BLOCK)
                for block in range(index, blocks, generators):
                    due = start + s + block / most_blocks
                    events = fleet.batch(block, s, iso(due))
                    if events:
                        records.append(("offered", due, due, 200, len(events)))
                        work.put_nowait((due, b"[" + b",".join(events) + b"]", len(events)))
            for _ in range(connections):
                work.put_nowait(None)

        async def send() -> None:
            connection = Connection(host, port)
            while (item := await work.get()) is not None:
                due, body, _count = item
                await _sleep_until(due)
                if time.time() - due > GIVE_UP_S:
                    records.append((INGEST, due, time.time(), -1, 0))
                    continue
                status, answer = await connection.request(head, body)
                acknowledged = 0
                if status == 200:
                    parsed = orjson.loads(answer)
                    acknowledged = parsed["accepted"] + parsed["duplicates"]
                records.append((INGEST, due, time.time(), status, acknowledged))

        forward = asyncio.create_task(_forward(records, out, done))
        await asyncio.gather(build(), *(send() for _ in range(connections)))
        done.set()
        await forward
        out.put(records[:])

    asyncio.run(main())


def prompt_client() -> str:
    """Real-time priority for the admissions-and-reads client, where the kernel allows it.

    It stands for the orchestrator and the dashboards, which run on other machines: there a
    request leaves when it is due. Here, on 2 cores the service keeps busy, a client at the
    service's priority can wake late, and its own wait would be timed as the service's. At
    real-time priority it wakes when due (it uses under 2 % of a core, so it takes almost
    nothing from the service); `CLIENT_LATE` prints how late it sent, either way."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except (OSError, AttributeError) as exc:
        return f"normal priority (real-time refused: {exc})"
    return "real-time priority (SCHED_RR 1)"


def mixed_process(plan: Plan, start: float, host: str, port: int, ingest_key: str,
                  finance_key: str, admission_teams: list[str], admissions: float,
                  reads: float, database_url: str, prompt: bool, out: Any) -> None:
    """Admissions and dashboard reads, each stream on its own schedule; and the machine's
    floor under the same load: `/healthz` (answered on the event loop, nothing else) and a
    bare `SELECT 1` round trip to PostgreSQL, each 10 times a second."""
    if prompt:
        print(f"admissions-and-reads client: {prompt_client()}", flush=True)
    records: list[Record] = []
    admit_head = (f"POST /v1/admissions HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {ingest_key}\r\nContent-Type: application/json\r\n"
                  ).encode()

    def read_head(path: str) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {finance_key}\r\n").encode()

    def admission(n: int) -> tuple[str, bytes, bytes]:
        body = orjson.dumps({"team_id": admission_teams[n % len(admission_teams)],
                             "sandbox_id": f"adm_sbx_{n}", "vcpu": 2, "memory_mib": 1024})
        return "POST /v1/admissions", admit_head, body

    def read(n: int) -> tuple[str, bytes, bytes]:
        s = int(n / reads)
        j = (n * 7919) % max(plan.size(s), 1)
        team = f"soak_team_{j % plan.teams}"
        sandbox = f"sbx_{j}_{(s + j) // plan.lifetime}"
        choices = [
            ("GET /v1/teams/{id}/usage", f"/v1/teams/{team}/usage?granularity=hour"),
            ("GET /v1/teams/{id}/balance", f"/v1/teams/{team}/balance"),
            ("GET /v1/teams/{id}/sandboxes", f"/v1/teams/{team}/sandboxes?state=running"),
            ("GET /v1/sandboxes/{id}/metrics", f"/v1/sandboxes/{sandbox}/metrics"),
        ]
        endpoint, path = choices[n % len(choices)]
        return endpoint, read_head(path), b""

    health_head = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n".encode()

    def health(_: int) -> tuple[str, bytes, bytes]:
        return FLOOR_HTTP, health_head, b""

    async def database_floor() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for n in range(int(plan.seconds * FLOOR_RATE)):
                due = start + n / FLOOR_RATE
                await _sleep_until(due)
                records.append((CLIENT_LATE, due, time.time(), 200, 0))
                await (await conn.execute("SELECT 1")).fetchone()
                records.append((FLOOR_DB, due, time.time(), 200, 0))

    async def stream(rate: float, make: Callable[[int], tuple[str, bytes, bytes]],
                     connections: int) -> None:
        if rate <= 0:
            return
        work: asyncio.Queue[tuple[float, int] | None] = asyncio.Queue()

        async def tick() -> None:
            for n in range(int(plan.seconds * rate)):
                due = start + n / rate
                await _sleep_until(due)
                work.put_nowait((due, n))
            for _ in range(connections):
                work.put_nowait(None)

        async def send() -> None:
            connection = Connection(host, port)
            while (item := await work.get()) is not None:
                due, n = item
                endpoint, head, body = make(n)
                records.append((CLIENT_LATE, due, time.time(), 200, 0))
                status, _ = await connection.request(head, body)
                records.append((endpoint, due, time.time(), status, 0))

        await asyncio.gather(tick(), *(send() for _ in range(connections)))

    async def main() -> None:
        done = asyncio.Event()
        forward = asyncio.create_task(_forward(records, out, done))
        await asyncio.gather(stream(admissions, admission, 16), stream(reads, read, 16),
                             stream(FLOOR_RATE, health, 2), database_floor())
        done.set()
        await forward
        out.put(records[:])

    asyncio.run(main())


def first_slice(url: str, deadline: float) -> float:
    """When the first minute slice of the pending samples begins (waiting for the fold to
    make it). A fresh database's samples before it go to the default partition, folded row
    by row: that start-up phase happens once in a deployment's life, so the soak measures
    the steady state after it instead."""
    while True:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT min(relname) FROM pg_class WHERE relkind = 'r' "
                "AND relname LIKE 'host_stats_pending_p%'").fetchone()
        if row is not None and row[0] is not None:
            minute = datetime.strptime(row[0].removeprefix("host_stats_pending_p"),
                                       "%Y%m%d%H%M").replace(tzinfo=UTC)
            log(f"first minute slice of pending samples: {minute:%H:%M} UTC; the load starts "
                "then (earlier samples of a fresh database go to the default partition)")
            return minute.timestamp()
        if time.time() > deadline:
            log("no minute slice yet: the load starts now (first minutes in the default "
                "partition)")
            return 0.0
        time.sleep(1)


# --------------------------------------------------------------------------- measuring


@dataclass
class Minute:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    offered: int = 0
    acknowledged: int = 0
    dropped: int = 0


class Recorder:
    """Per minute of the run: offered events by their scheduled time; everything else (events
    acknowledged, latency from the scheduled send, errors, drops) by the time of the answer,
    so a minute's figures are complete when it ends and a slow answer shows its whole wait."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.lock = threading.Lock()
        self.minutes: dict[int, Minute] = defaultdict(Minute)

    def _minute(self, moment: float) -> Minute:
        return self.minutes[max(int((moment - self.start) // 60), 0)]

    def add(self, records: list[Record]) -> None:
        with self.lock:
            for endpoint, due, answered, status, events in records:
                if endpoint == "offered":
                    self._minute(due).offered += events
                    continue
                minute = self._minute(answered)
                if status == -1:
                    minute.dropped += 1
                    continue
                minute.latencies[endpoint].append(answered - due)
                if status in OK:
                    minute.acknowledged += events
                else:
                    minute.errors[endpoint][status] += 1


def rss_mib(process: psutil.Process) -> float:
    try:
        return float(process.memory_info().rss) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def scrape(base: str) -> dict[str, float]:
    """Skipped job runs (`job/why`) and job run counts from the service's /metrics."""
    found: dict[str, float] = {}
    try:
        body = httpx.get(base + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return found
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "metering_job_runs_skipped_total":
                found[f"skipped {sample.labels['job']}/{sample.labels['why']}"] = sample.value
            elif sample.name == "metering_job_failures_total":
                found[f"failed {sample.labels['job']}"] = sample.value
            elif sample.name in ("metering_job_duration_seconds_sum",
                                 "metering_job_duration_seconds_count"):
                kind = "sum" if sample.name.endswith("_sum") else "count"
                found[f"{kind} {sample.labels['job']}"] = sample.value
    return found


def statements_reset(url: str) -> bool:
    """Start counting statements if the server loads pg_stat_statements (a bench-only server:
    `shared_preload_libraries` needs a restart, so the soak never changes it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        loaded = conn.execute("SHOW shared_preload_libraries").fetchone()
        if not loaded or "pg_stat_statements" not in str(loaded[0]):
            return False
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    return True


def statements_top(url: str, limit: int = 15) -> list[str]:
    """The database's statements by total execution time (waits on locks included)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("""
            SELECT s.total_exec_time, s.calls, s.mean_exec_time, s.rows,
                   regexp_replace(s.query, '\\s+', ' ', 'g')
            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
            WHERE d.datname = %s ORDER BY s.total_exec_time DESC LIMIT %s""",
                            (DATABASE, limit)).fetchall()
        total = conn.execute("""
            SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements s
            JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s""",
                             (DATABASE,)).fetchone()
    whole = float(total[0]) if total else 0.0
    lines = [f"statements: {whole / 1000:,.0f} s of execution in all"]
    for spent, calls, mean, rows_out, query in rows:
        lines.append(f"  {spent / 1000:8.1f} s {spent / max(whole, 1) * 100:4.0f} % "
                     f"{calls:>8,} calls {mean:9.2f} ms mean {rows_out:>10,} rows  {query[:150]}")
    return lines


def deadlocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = %s",
                           (DATABASE,)).fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=25_000, help="events/s (= sandboxes running)")
    parser.add_argument("--steps", default=None,
                        help="comma-separated rates run one after the other (step mode)")
    parser.add_argument("--step-minutes", type=float, default=5)
    parser.add_argument("--lifetime", type=int, default=600, help="seconds each execution runs")
    parser.add_argument("--teams", type=int, default=500)
    parser.add_argument("--admissions", type=float, default=20, help="admissions/s")
    parser.add_argument("--reads", type=float, default=10, help="dashboard reads/s")
    parser.add_argument("--generators", type=int, default=2, help="ingest load processes")
    parser.add_argument("--connections", type=int, default=8,
                        help="keep-alive connections per ingest load process")
    parser.add_argument("--workers", type=int, default=2, help="API processes")
    parser.add_argument("--client-priority", choices=("realtime", "normal"), default="realtime",
                        help="of the admissions-and-reads client (see prompt_client)")
    parser.add_argument("--future-tolerance", type=int, default=5,
                        help="METERING_FUTURE_TOLERANCE_S of the service (seconds)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="minutes before the memory baseline (default: a third, at most 5)")
    args = parser.parse_args()

    if args.steps:
        rates = tuple(int(r) for r in args.steps.split(","))
        step_s = int(args.step_minutes * 60)
    else:
        rates, step_s = (args.rate,), int(args.minutes * 60)
    plan = Plan(rates, step_s, args.lifetime, args.teams)
    minutes = -(-plan.seconds // 60)
    warmup = args.warmup if args.warmup is not None else min(5.0, max(1.0, minutes / 3))

    url = fresh_database(DATABASE)
    with psycopg.connect(url) as conn:
        autovacuum = conn.execute("SHOW autovacuum").fetchone()
    if autovacuum is None or autovacuum[0] != "on":
        # Without it nothing analyses the tables the service does not vacuum itself: their
        # plans go stale as they grow and the run measures the server, not the service.
        log("WARNING: this PostgreSQL runs without autovacuum; a long soak here slows down "
            "minute by minute for that alone (docs/scaling.md)")
    # Pending samples use minute slices only from a minute past the farthest future an event
    # may carry; the soak's events are never ahead of now, so a small tolerance lets the
    # slices start a minute after the service does (with the default, 300 s, six), and the
    # load starts with the first slice (see `first_slice`).
    env = {"METERING_FUTURE_TOLERANCE_S": str(args.future_tolerance)}
    with service(url, workers=args.workers, scheduler=True, env=env) as (base, admin):
        host, port_text = base.removeprefix("http://").split(":")
        port = int(port_text)
        ingest = create_key(base, admin, "ingest")
        finance = create_key(base, admin, "finance")
        fin = {"Authorization": f"Bearer {finance}"}
        admission_teams = [f"adm_team_{i}" for i in range(20)]
        for team in admission_teams:
            httpx.put(f"{base}/v1/teams/{team}", json={"plan": "pro"},
                      headers=fin).raise_for_status()
            httpx.post(f"{base}/v1/teams/{team}/overrides",
                       json={"concurrency": 100_000, "starts_per_second": 10_000}, headers=fin)
        jobs_process, api_processes = service_processes(port)
        assert jobs_process is not None
        log(f"machine: {machine()}; scheduler/jobs process {jobs_process.pid}, "
            f"API processes {[p.pid for p in api_processes]}")
        log(f"soak: rates {', '.join(f'{r:,}' for r in rates)} events/s, "
            f"{plan.step_s / 60:g} min each ({args.lifetime} s lives, {args.teams} teams), "
            f"{args.admissions:g} admissions/s, {args.reads:g} reads/s; "
            f"{args.generators} ingest load processes x {args.connections} connections")

        start = max(time.time() + 3,  # the load processes start and connect first
                    first_slice(url, deadline=time.time() + 180))
        out: Any = multiprocessing.get_context("fork").Queue()
        loaders = [multiprocessing.get_context("fork").Process(
            target=ingest_process, args=(i, args.generators, plan, start, host, port, ingest,
                                         args.connections, out), daemon=True)
            for i in range(args.generators)]
        loaders.append(multiprocessing.get_context("fork").Process(
            target=mixed_process, args=(plan, start, host, port, ingest, finance,
                                        admission_teams, args.admissions, args.reads, url,
                                        args.client_priority == "realtime", out),
            daemon=True))
        for loader in loaders:
            loader.start()
        recorder = Recorder(start)
        stop = threading.Event()

        def collect() -> None:
            while not stop.is_set() or not out.empty():
                try:
                    recorder.add(out.get(timeout=0.5))
                except queue.Empty:
                    continue

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        generator_processes = [psutil.Process(p.pid) for p in loaders]

        api_cpu, jobs_cpu, db_cpu, bg_cpu, gen_cpu = (CpuMeter() for _ in range(5))
        api_cpu.used(api_processes)
        jobs_cpu.used([jobs_process])
        backends, background = postgres_processes(DATABASE)
        db_cpu.used(backends)
        bg_cpu.used(background)
        gen_cpu.used(generator_processes)
        deadlocks_at_start = deadlocks(url)
        counting = statements_reset(url)
        memory: dict[int, list[float]] = defaultdict(list)  # pid -> RSS MiB at each minute
        names: dict[int, str] = {jobs_process.pid: "jobs"}
        p99s: dict[str, list[tuple[int, float]]] = defaultdict(list)
        held: list[tuple[int, float, float]] = []  # (minute, offered/s, acknowledged/s)
        cpu_per_event: list[tuple[int, float, float, float, float]] = []
        replaced = 0
        counters: dict[str, float] = {}
        last_scrape: dict[str, float] = {}
        for minute in range(minutes):
            end = start + min((minute + 1) * 60, plan.seconds)
            while time.time() < end + 1.5:  # the load processes forward every second
                time.sleep(min(1.0, max(end + 1.5 - time.time(), 0.05)))
            # uvicorn's supervisor replaces an API process that stops answering its pings.
            _, current = service_processes(port)
            replaced += len({p.pid for p in api_processes} - {p.pid for p in current})
            api_processes = current
            for i, process in enumerate(api_processes):
                names.setdefault(process.pid, f"api{i + 1}")
            sizes = {p.pid: rss_mib(p) for p in [jobs_process, *api_processes]}
            for pid, size in sizes.items():
                memory[pid].append(size)
            span = min(60.0, plan.seconds - minute * 60)
            with recorder.lock:
                seen = recorder.minutes.get(minute, Minute())
                latencies = {k: list(v) for k, v in seen.latencies.items()}
                errors = {k: dict(v) for k, v in seen.errors.items()}
                offered, acknowledged, dropped = seen.offered, seen.acknowledged, seen.dropped
            backends, background = postgres_processes(DATABASE)
            used = (api_cpu.used(api_processes), jobs_cpu.used([jobs_process]),
                    db_cpu.used(backends), bg_cpu.used(background))
            generator_used = gen_cpu.used(generator_processes)
            per_event = [u / max(acknowledged, 1) * 1e6 for u in used]
            cpu_per_event.append((minute, *per_event))
            held.append((minute, offered / span, acknowledged / span))
            scraped = scrape(base)
            # Mean run time of each job this minute, from the service's own histogram.
            runs = {}
            for key, value in scraped.items():
                if key.startswith("count "):
                    job = key[6:]
                    count = value - last_scrape.get(key, 0.0)
                    spent = scraped.get(f"sum {job}", 0.0) - last_scrape.get(f"sum {job}", 0.0)
                    if count > 0 and job in JOBS_SHOWN:
                        runs[job] = (count, spent / count)
            last_scrape = scraped
            counters = {k: v for k, v in scraped.items()
                        if k.startswith(("skipped ", "failed "))}
            parts = []
            for endpoint in sorted(latencies):
                p99 = percentile(latencies[endpoint], 0.99) * 1000
                p99s[endpoint].append((minute, p99))
                failed = errors.get(endpoint)
                parts.append(f"{endpoint} p99 {p99:.0f} ms (n={len(latencies[endpoint])}"
                             + (f", errors {failed}" if failed else "") + ")")
            rate_text = f"{rates[plan.step_of_minute(minute)]:,}/s step; " if len(rates) > 1 else ""
            print(f"[minute {minute + 1}] {rate_text}offered {offered / span:,.0f} events/s, "
                  f"acknowledged {acknowledged / span:,.0f} "
                  f"({acknowledged / max(offered, 1) * 100:.1f} %)"
                  + (f", dropped {dropped} batches" if dropped else "")
                  + f"; CPU per event: API {per_event[0]:.0f} µs, jobs {per_event[1]:.0f}, "
                  f"PostgreSQL {per_event[2]:.0f} + background {per_event[3]:.0f}, "
                  f"all in {sum(per_event):.0f} µs; load generators "
                  f"{generator_used / span * 100:.0f} % of a core; "
                  f"load {os.getloadavg()[0]:.1f}; RSS MiB "
                  + ", ".join(f"{names.get(pid, pid)} {size:.0f}" for pid, size in sizes.items())
                  + (f"; API processes replaced {replaced}" if replaced else "")
                  + (f"; {', '.join(f'{k} {v:.0f}' for k, v in sorted(counters.items()))}"
                     if counters else "; no skipped or failed job runs")
                  + "; jobs " + ", ".join(f"{job} {n:.0f} runs of {mean * 1000:.0f} ms"
                                          for job, (n, mean) in sorted(runs.items()))
                  + "; " + "; ".join(parts), flush=True)
        stop.set()
        for loader in loaders:
            loader.join(15)
        collector.join(5)
        locked_out = deadlocks(url) - deadlocks_at_start
        statements = statements_top(url) if counting else []

    skip = int(warmup)
    print(f"machine: {machine()}")
    print(f"plan: rates {', '.join(f'{r:,}' for r in rates)} events/s, {plan.step_s / 60:g} min "
          f"each, {args.lifetime} s lives, {args.admissions:g} admissions/s, "
          f"{args.reads:g} reads/s")
    for step, rate in enumerate(rates):
        mine = [h for h in held if plan.step_of_minute(h[0]) == step]
        worst = min((a / max(o, 1) for _, o, a in mine), default=0.0)
        holds = all(a >= HELD * o for _, o, a in mine)
        print(f"step {rate:,} events/s: lowest minute acknowledged {worst * 100:.1f} % of "
              f"offered -> {'held' if holds else 'NOT held'} every minute (within 2 %)")
    for pid, sizes in memory.items():
        baseline = sizes[min(skip, len(sizes) - 1)]
        print(f"memory {names.get(pid, pid)}: {baseline:.0f} MiB after {warmup:g} min warm-up "
              f"-> {sizes[-1]:.0f} MiB at the end: {(sizes[-1] - baseline) / baseline * 100:+.1f} %"
              " (goal < 10 %)")
    steady = [c for c in cpu_per_event if c[0] >= skip] or cpu_per_event
    if steady:
        average = [sum(c[i] for c in steady) / len(steady) for i in range(1, 5)]
        print(f"CPU per event after warm-up: API {average[0]:.0f} µs, jobs {average[1]:.0f} µs, "
              f"PostgreSQL backends {average[2]:.0f} µs, PostgreSQL background "
              f"{average[3]:.0f} µs: all in {sum(average):.0f} µs (goal <= 60 µs)")
    for endpoint, values in sorted(p99s.items()):
        after = [v for m, v in values if m >= skip] or [v for _, v in values]
        first = after[0]
        print(f"p99 {endpoint}: first {first:.0f} / median {percentile(after, 0.5):.0f} / "
              f"max {max(after):.0f} ms per minute after warm-up (max/first "
              f"{max(after) / max(first, 0.001):.2f})")
    print(f"job runs: {', '.join(f'{k} {v:.0f}' for k, v in sorted(counters.items())) or 'none skipped or failed'}")
    print(f"deadlocks in the database during the run: {locked_out}")
    for line in statements:
        print(line)


if __name__ == "__main__":
    main()
