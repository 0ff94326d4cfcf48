"""Ingest throughput: a fleet's per-second samples posted over HTTP to a running service,
against a raw COPY of the same events into a bare table on the same PostgreSQL.

    .venv/bin/python bench/ingest.py [--sandboxes 1000] [--seconds 120] [--clients 8]

Prints events/s, CPU per event (the service's processes, its database's backends and server
processes, the load's client: the split `bench.soak` prints), p50/p99 batch latency, the COPY
rate and the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import io
import queue
import threading
import time
from datetime import timedelta

import orjson
import psutil
import psycopg

from bench.common import (
    CpuMeter,
    create_key,
    fleet_events,
    fresh_database,
    log,
    machine,
    now_utc,
    percentile,
    postgres_processes,
    service,
    service_processes,
)

DATABASE = "metering_bench_ingest"


def post_all(base: str, key: str, bodies: list[bytes], clients: int) -> tuple[float, list[float], dict]:
    host, port = base.removeprefix("http://").split(":")
    work: queue.Queue[bytes | None] = queue.Queue()
    for body in bodies:
        work.put(body)
    for _ in range(clients):
        work.put(None)
    latencies: list[float] = []
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "errors": 0}
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents-batch+json"}
        while (body := work.get()) is not None:
            started = time.perf_counter()
            conn.request("POST", "/v1/events", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if response.status != 200:
                    totals["errors"] += 1
                    continue
                answer = orjson.loads(payload)
                for field in ("accepted", "duplicates", "rejected"):
                    totals[field] += answer[field]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, totals


def copy_baseline(url: str, bodies: list[bytes]) -> float:
    """COPY the same events, batch by batch, each batch committed: the physical limit."""
    with psycopg.connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS bare_events")
        conn.execute("CREATE TABLE bare_events (source text, id text, type text, subject text, "
                     "time timestamptz, data jsonb)")
        conn.commit()
        rows_per_batch = []
        for body in bodies:
            buf = io.StringIO()
            for e in orjson.loads(body):
                data = orjson.dumps(e["data"]).decode().replace("\\", "\\\\")
                buf.write(f"{e['source']}\t{e['id']}\t{e['type']}\t{e['subject']}\t{e['time']}\t{data}\n")
            rows_per_batch.append(buf.getvalue())
        started = time.perf_counter()
        for text in rows_per_batch:
            with conn.cursor() as cur, cur.copy("COPY bare_events FROM STDIN") as copy:
                copy.write(text)
            conn.commit()
        return time.perf_counter() - started


class CpuMeters:
    """CPU seconds of the service's processes, its database's backends and server processes,
    and this process (the load's client threads), between two readings. The processes are
    looked up at every reading (a helper or backend started in between counts from its
    start)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.meters = [CpuMeter() for _ in range(4)]
        self.used()

    def used(self) -> tuple[float, float, float, float]:  # float-ok: CPU seconds
        _, api = service_processes(self.port)
        backends, background = postgres_processes(DATABASE)
        groups = (api, backends, background, [psutil.Process()])
        api_s, db_s, background_s, client_s = (
            m.used(g) for m, g in zip(self.meters, groups, strict=True))
        return api_s, db_s, background_s, client_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandboxes", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    url = fresh_database(DATABASE)
    start = now_utc() - timedelta(seconds=5)
    batches = list(fleet_events(args.sandboxes, args.seconds, start))
    bodies = [orjson.dumps(b) for b in batches]
    events = sum(len(b) for b in batches)
    log(f"{events} events in {len(bodies)} batches, {sum(map(len, bodies)) / 1e6:.1f} MB")
    with service(url, workers=args.workers) as (base, admin):
        key = create_key(base, admin, "ingest")
        post_all(base, key, bodies[:1], 1)  # the created events, not timed
        meters = CpuMeters(int(base.rsplit(":", 1)[1]))
        elapsed, latencies, totals = post_all(base, key, bodies[1:], args.clients)
        used = meters.used()
        timed_events = events - len(batches[0])
        # Replaying a slice proves the figures were deduplicated, not blindly appended.
        _, _, replay = post_all(base, key, bodies[1:4], 1)
    rate = timed_events / elapsed
    copy_elapsed = copy_baseline(url, bodies[1:])
    copy_rate = timed_events / copy_elapsed
    print(f"machine: {machine()}")
    print(f"ingest over HTTP: {timed_events} events in {elapsed:.2f} s = {rate:,.0f} events/s "
          f"({args.clients} clients, {args.workers} API processes, batches of {args.sandboxes})")
    api_s, db_s, background_s, client_s = (u / timed_events * 1e6 for u in used)
    print(f"CPU per event: API and helpers {api_s:.1f} µs, PostgreSQL {db_s:.1f} + background "
          f"{background_s:.1f}, all in {api_s + db_s + background_s:.1f} µs; the load's client "
          f"{client_s:.1f} µs (the same split as `bench.soak` prints, to compare the two)")
    print(f"batch latency: p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
    print(f"answers: {totals}; replay of 3 batches: {replay}")
    print(f"raw COPY into a bare table: {copy_rate:,.0f} events/s")
    print(f"ratio: {rate / copy_rate:.2f}")


if __name__ == "__main__":
    main()
