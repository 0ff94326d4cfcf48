"""What lifecycle churn costs an event: a fleet's per-second batches with sandboxes ending
and starting in them, against the same batches without, posted back to back over HTTP.

    .venv/bin/python -m bench.churn [--sandboxes 3000] [--seconds 100] [--lifetime 600]
                                    [--rounds 2]

A fleet of `--sandboxes` running sandboxes sends one `host_stats` each a second, in batches
of 1,000 (the soak's own batches, `bench.soak.Fleet`). With churn each lives `--lifetime`
seconds and is replaced (a killed and a created event in the batch of that second: at 600 s,
3.3 lifecycle events in a batch of 1,000); without, nothing ends. The first fleet second
(every sandbox created) is posted untimed; the rest are timed, from 8 clients, as
`bench.ingest` does. The events are from the last `--seconds` (all younger than the fold's
horizon: the fresh-sample path, as a live fleet's). Prints events/s and CPU per event (the
split `bench.soak` prints) for each, alternating, `--rounds` times each.
"""

from __future__ import annotations

import argparse
import time

import bench.ingest as ingest_bench
from bench.common import create_key, fresh_database, machine, service
from bench.soak import BLOCK, Fleet, Plan, iso

DATABASE = "metering_bench_churn"
NEVER = 10**9  # a lifetime no sandbox reaches in the run


def run(sandboxes: int, seconds: int, lifetime: int) -> str:
    ingest_bench.DATABASE = DATABASE  # the database `CpuMeters` measures
    url = fresh_database(DATABASE)
    fleet = Fleet(Plan((sandboxes,), NEVER, lifetime, 500))
    start = time.time() - seconds - 2
    first: list[bytes] = []
    rest: list[bytes] = []
    events = lifecycle = 0
    for s in range(seconds + 1):
        for block in range(-(-sandboxes // BLOCK)):
            batch = fleet.batch(block, s, iso(start + s + block / 100))
            body = b"[" + b",".join(batch) + b"]"
            if s == 0:
                first.append(body)
                continue
            rest.append(body)
            events += len(batch)
            lifecycle += sum(1 for e in batch if b"lifecycle" in e)
    with service(url, workers=2) as (base, admin):
        key = create_key(base, admin, "ingest")
        ingest_bench.post_all(base, key, first, 4)
        meters = ingest_bench.CpuMeters(int(base.rsplit(":", 1)[1]))
        elapsed, _, totals = ingest_bench.post_all(base, key, rest, 8)
        used = meters.used()
    if totals["accepted"] != events:
        raise SystemExit(f"not every event was accepted: {totals}")
    api, db, background, _ = (u / events * 1e6 for u in used)
    return (f"{events:,} events, {lifecycle:,} of them lifecycle: {events / elapsed:,.0f} "
            f"events/s; CPU per event: API and helpers {api:.1f} µs, PostgreSQL {db:.1f} + "
            f"background {background:.1f}, all in {api + db + background:.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandboxes", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=100)
    parser.add_argument("--lifetime", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for _ in range(args.rounds):
        print(f"with churn ({args.lifetime} s lives): "
              f"{run(args.sandboxes, args.seconds, args.lifetime)}", flush=True)
        print(f"without churn: {run(args.sandboxes, args.seconds, NEVER)}", flush=True)


if __name__ == "__main__":
    main()
