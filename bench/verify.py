"""Self-verifying months at scale: `verify` of a month against the close of the same month.

    .venv/bin/python -m bench.verify [--teams 10000] [--executions 1000000] [--big 100000]

One command, one fresh database: the month of `bench.close` (10,000 teams, 1,000,000
executions with their segments, rollups and lifecycle events, loaded with bulk SQL), plus one
team (`team_big`, Pro) with `--big` executions of its own. Then, in this order and timed:

1. the month close, which checks every invoice against the raw events before finalizing;
2. `metering invoices verify` of the month (`billing.verification.service.verify_period`):
   every invoice re-derived from the raw lifecycle events, plan versions and credit ledger;
3. the drill-down of `team_big`'s vCPU line (`GET /v1/invoices/{id}/lines/{n}/executions`,
   first page of 100, through the HTTP app in-process), `--pages` times: p50 and p95.

Goals: verify <= 2 x the close; first page p95 <= 200 ms. `--teams/--executions/--big` scale
it down for a quick run. Figures depend on what else the machine runs: say so with them.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import text

from bench.close import load, roll_up, run_sql
from bench.common import fresh_database, log, machine, percentile
from billing.app import create_app, wire_billing
from billing.invoices import close as month_close
from billing.verification import service as verification
from metering import migrate
from metering.auth import service as keys
from metering.config import Settings
from metering.core.clock import format_period, month_start, next_month_start, utc_now
from metering.core.money import fmt
from metering.db import make_engine, make_sessionmaker, transaction

BIG = [
    ("big team", """
        INSERT INTO teams (id, name, created_at, auto_created)
        VALUES ('team_big', 'Big team', :plan_at, false)"""),
    ("big team plan", """
        INSERT INTO team_plans (team_id, plan_code, effective_at)
        VALUES ('team_big', 'pro', :plan_at)"""),
    ("big executions", """
        INSERT INTO executions (execution_id, team_id, sandbox_id, template_id, start_at,
                                start_kind, vcpu, memory_mib, disk_mib, end_at, end_kind,
                                end_reason, last_event_at, updated_at)
        SELECT 'big_' || n, 'team_big', 'sbx_big_' || (n % 5000), 'base', t.start_at,
               'created', 1 + n % 4, 512 * (1 + n % 4), 10240, t.start_at + t.dur, 'killed',
               'request', t.start_at + t.dur, t.start_at + t.dur + interval '1 second'
        FROM generate_series(0, :big - 1) n
        CROSS JOIN LATERAL (SELECT
            CAST(:start AS timestamptz)
              + make_interval(secs => CAST((CAST(n AS bigint) * 2654435761) % (:month_s - 3600)
                                           AS int))
              + make_interval(secs => (n % 991) / 1000.0) AS start_at,
            make_interval(secs => 30 + (CAST(n AS bigint) * 40503) % 1800) AS dur) t"""),
    ("big segments", """
        INSERT INTO execution_segments (execution_id, seq, team_id, start_at, end_at, vcpu,
                                        memory_mib)
        SELECT execution_id, 0, team_id, start_at, end_at, vcpu, memory_mib
        FROM executions WHERE team_id = 'team_big'"""),
    ("big lifecycle_events", """
        INSERT INTO lifecycle_events (source, id, type, subject, team_id, execution_id, time,
                                      data, digest)
        SELECT 'bench', e.execution_id || ':' || k.kind, 'sandbox.lifecycle.' || k.kind,
               e.sandbox_id, e.team_id, e.execution_id, k.time,
               jsonb_build_object('team_id', e.team_id, 'execution_id', e.execution_id)
                   || k.data, decode('00', 'hex')
        FROM executions e
        CROSS JOIN LATERAL (VALUES
            ('created', e.start_at, jsonb_build_object('vcpu', e.vcpu, 'memory_mib',
                                                       e.memory_mib, 'template_id', 'base')),
            ('killed', e.end_at, jsonb_build_object('reason', 'request'))
        ) AS k(kind, time, data)
        WHERE e.team_id = 'team_big'"""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teams", type=int, default=10_000)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=100_000,
                        help="executions of the one team whose line is drilled into")
    parser.add_argument("--pages", type=int, default=40, help="first-page reads timed")
    args = parser.parse_args()

    now = utc_now()
    start = month_start(month_start(now) - timedelta(days=1))  # last month: ended
    end = next_month_start(start)
    period = format_period(start)
    url = fresh_database("metering_bench_verify")
    engine = make_engine(url, pool_size=4)
    migrate.upgrade(engine)
    log(f"loading {period}: {args.teams:,} teams, {args.executions:,} executions, "
        f"team_big with {args.big:,}")
    began = time.perf_counter()
    load(url, args.teams, args.executions, start)
    run_sql(url, BIG, {"big": args.big, "start": start, "plan_at": start - timedelta(days=40),
                       "month_s": int((end - start).total_seconds())})
    roll_up(url, "big_%")
    log(f"loaded in {time.perf_counter() - began:.1f} s")

    wire_billing()
    settings = Settings(database_url=url, run_scheduler=False)
    sessions = make_sessionmaker(engine)
    t0 = time.perf_counter()
    summary = month_close.close_period(sessions, period, settings, force=True)
    close_s = time.perf_counter() - t0
    assert not summary.failures, summary.failures[:3]
    log(f"closed in {close_s:.1f} s: {summary.invoices_made:,} invoices")

    t0 = time.perf_counter()
    with transaction(sessions) as session:
        report = verification.verify_period(session, period, settings)
    verify_s = time.perf_counter() - t0
    bad = [c for c in report.checks if not c.ok]
    assert not bad, [c.reason() for c in bad[:3]]
    log(f"verified in {verify_s:.1f} s: {len(report.checks):,} invoices OK")

    app = create_app(settings, database_url=url, migrate_on_start=False)
    with transaction(sessions) as session:
        key = keys.create_key(session, "team", "team_big").key
        invoice_id, position, quantity = session.execute(text("""
            SELECT i.id, l.position, l.quantity FROM invoices i
            JOIN invoice_lines l ON l.invoice_id = i.id
            WHERE i.team_id = 'team_big' AND l.kind = 'usage_vcpu'""")).one()
    url_path = f"/v1/invoices/{invoice_id}/lines/{position}/executions"
    timings: list[float] = []  # float-ok: seconds
    with TestClient(app) as client:
        client.get(url_path, params={"limit": 100},  # warm-up: the app's first request
                   headers={"Authorization": f"Bearer {key}"})
        for _ in range(args.pages):
            t0 = time.perf_counter()
            page = client.get(url_path, params={"limit": 100},
                              headers={"Authorization": f"Bearer {key}"})
            timings.append(time.perf_counter() - t0)
            assert page.status_code == 200 and len(page.json()["data"]) == 100, page.text

    print(f"machine: {machine()}")
    print(f"month {period}: {args.teams:,} teams + team_big, {args.executions + args.big:,} "
          f"executions, {summary.invoices_made:,} invoices")
    print(f"close (checks each invoice against the raw events before finalizing): "
          f"{close_s:.1f} s")
    print(f"verify of the month: {verify_s:.1f} s, {len(report.checks):,} invoices OK; "
          f"{verify_s / close_s:.2f} x the close (goal <= 2)")
    print(f"drill-down of team_big's vCPU line ({args.big:,} executions, {fmt(quantity)} "
          "vCPU-s), "
          f"first page of 100 x {args.pages}: p50 {percentile(timings, 0.5) * 1000:.0f} ms, "
          f"p95 {percentile(timings, 0.95) * 1000:.0f} ms (goal p95 <= 200 ms)")
    engine.dispose()


if __name__ == "__main__":
    main()
