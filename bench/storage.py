"""Bytes on disk per sandbox-minute of `host_stats`, after the fold, against a row per event.

    .venv/bin/python bench/storage.py [--sandboxes 500] [--minutes 20]

Samples are ingested through the real ingest service (in-process, same SQL as the API), folded
by the real job, then the tables and their indexes are measured with pg_total_relation_size
after VACUUM FULL (the steady state a long-lived table converges to under autovacuum).
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import psycopg

from bench.common import fleet_events, fresh_database, log, machine, now_utc
from billing.app import wire_billing
from metering import migrate
from metering.core.events import validate_batch
from metering.db import make_engine, make_sessionmaker, transaction
from metering.ingest import jobs, service

NAIVE = """
CREATE TABLE naive_events (
    source text, id text, type text, subject text, team_id text, execution_id text,
    time timestamptz, cpu_pct real, memory_used_mib int, digest bytea,
    PRIMARY KEY (source, id));
CREATE INDEX ON naive_events (subject, time);
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandboxes", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=20)
    args = parser.parse_args()
    wire_billing()  # new teams start on the default plan, as in the service
    url = fresh_database("metering_bench_storage")
    engine = make_engine(url, pool_size=2)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    start = (now_utc() - timedelta(minutes=args.minutes + 10)).replace(second=0, microsecond=0)
    seconds = args.minutes * 60
    now = now_utc()
    naive_rows = []
    for number, batch in enumerate(fleet_events(args.sandboxes, seconds, start)):
        with transaction(sessions) as session:
            result = service.ingest(session, batch, now, 300)
            assert result.rejected == 0, result.errors[:3]
        if number:
            valid, _ = validate_batch(batch, now)
            naive_rows.extend(
                (e.source, e.id, e.type, e.subject, e.team_id, e.execution_id, e.time,
                 (e.cpu_centipct or 0) / 100, e.memory_used_mib, e.digest) for e in valid)
        if number % 120 == 0:
            log(f"{number}/{seconds} seconds ingested")
            jobs.fold_samples(sessions)
    jobs.fold_samples(sessions)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(NAIVE)
        with conn.cursor() as cur, cur.copy(
            "COPY naive_events FROM STDIN") as copy:
            for row in naive_rows:
                copy.write_row(row)
        conn.execute("VACUUM FULL sample_minutes")
        conn.execute("VACUUM FULL host_stats_pending")
        conn.execute("VACUUM FULL naive_events")
        # Partitioned: the parent has no storage of its own; sum its monthly partitions.
        folded = conn.execute("SELECT sum(pg_total_relation_size(relid)) "
                              "FROM pg_partition_tree('sample_minutes')").fetchone()[0]
        pending = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
            "WHERE inhparent = to_regclass('host_stats_pending')").fetchone()[0]
        naive = conn.execute("SELECT pg_total_relation_size('naive_events')").fetchone()[0]
        rows = conn.execute("SELECT count(*), sum(samples) FROM sample_minutes").fetchone()
    sandbox_minutes = args.sandboxes * args.minutes
    print(f"machine: {machine()}")
    print(f"{args.sandboxes} sandboxes x {args.minutes} min = {sandbox_minutes} sandbox-minutes, "
          f"{rows[1]} samples in {rows[0]} minute rows (pending left: {pending} bytes)")
    print(f"folded: {folded / sandbox_minutes:,.0f} bytes per sandbox-minute (tables + indexes)")
    print(f"row per event: {naive / sandbox_minutes:,.0f} bytes per sandbox-minute")
    print(f"ratio: {folded / naive:.3f}")
    engine.dispose()


if __name__ == "__main__":
    main()
