"""Month close at scale: 10,000 teams and 1,000,000 executions in one month, closed in-process.

    .venv/bin/python bench/close.py [--teams 10000] [--executions 1000000] [--chunk 500]

The month is loaded straight into PostgreSQL with `INSERT ... SELECT generate_series` (minutes
of ingest would prove nothing here; ingest has its own benchmark), as rows consistent with
what ingest produces for created/updated/killed events:

- `teams`, `team_plans` (70 % Hobby, 25 % Pro, 5 % Enterprise from before the month; every
  50th Hobby team moves to Pro on the 15th, so some teams are rated across two plans and two
  price periods), and each Hobby team's $100 plan credit in `credit_grants`;
- `executions` with true ends (killed), 10 s to 30 min long, one in ten up to 2 h; starts
  spread over the whole month with millisecond times, so some cross into the next month;
- `execution_segments`: one per execution, two for one in ten (an `updated` event doubling
  the vCPUs halfway);
- `usage_rollups` computed from those segments by production's own rollup
  (`metering.executions.repository.apply_rollup_delta`), in batches of executions;
- 500 executions still open (no end event, stale since 30 min into the next month), which the
  close integrates live, as it must before the settle sweep has run.

- `lifecycle_events` those rows come from: the close reads executions, segments and rollups,
  and checks every invoice against the usage integrated from these events before finalizing.

Stripe is not involved (the close only queues `invoice.finalized`).

After the close the bench checks the result: every team with usage has one invoice, the usage
the invoices recorded equals the month's usage read independently, and for a sample of teams
the per-team rating path (`service.rate_team_month`) gives the same subtotal as the bulk close.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.common import fresh_database, log, machine
from billing.app import wire_billing
from billing.invoices import close as month_close
from billing.invoices import service
from metering import migrate
from metering.config import Settings
from metering.core.clock import (
    format_period,
    month_start,
    next_month_start,
    parse_period,
    utc_now,
)
from metering.db import make_engine, make_sessionmaker, transaction
from metering.executions import repository as executions_repo
from metering.usage import usage_totals

TEAM = "'team_' || lpad(CAST(i AS text), 5, '0')"

LOAD = [
    ("teams", f"""
        INSERT INTO teams (id, name, created_at, auto_created)
        SELECT {TEAM}, 'Team ' || i, :plan_at, false FROM generate_series(0, :teams - 1) i"""),
    ("team_plans", f"""
        INSERT INTO team_plans (team_id, plan_code, effective_at)
        SELECT {TEAM}, CASE WHEN i % 20 = 0 THEN 'enterprise'
                            WHEN i % 4 = 1 THEN 'pro' ELSE 'hobby' END, :plan_at
        FROM generate_series(0, :teams - 1) i"""),
    ("plan changes", f"""
        INSERT INTO team_plans (team_id, plan_code, effective_at)
        SELECT {TEAM}, 'pro', CAST(:start AS timestamptz) + interval '14 days 6 hours'
        FROM generate_series(0, :teams - 1) i
        WHERE i % 50 = 7 AND i % 20 <> 0 AND i % 4 <> 1"""),
    ("credit_grants", f"""
        INSERT INTO credit_grants (id, team_id, amount, currency, priority, granted_at, reason,
                                   kind, idempotency_key)
        SELECT 'cg_bench_' || i, {TEAM}, 100, 'usd', 0, :plan_at, 'hobby plan credit', 'plan',
               'plan:hobby:' || {TEAM}
        FROM generate_series(0, :teams - 1) i WHERE i % 20 <> 0 AND i % 4 <> 1"""),
    ("executions", """
        INSERT INTO executions (execution_id, team_id, sandbox_id, template_id, start_at,
                                start_kind, vcpu, memory_mib, disk_mib, end_at, end_kind,
                                end_reason, last_event_at, updated_at)
        SELECT 'exe_' || n, 'team_' || lpad(CAST(n % :teams AS text), 5, '0'), 'sbx_' || n,
               'base', t.start_at, 'created', (ARRAY[1, 2, 2, 4, 8])[1 + n % 5],
               (ARRAY[512, 1024, 2048, 4096])[1 + (n / 5) % 4], 10240,
               t.start_at + t.dur, 'killed', 'request', t.start_at + t.dur,
               t.start_at + t.dur + interval '1 second'  -- ingested as it happened
        FROM generate_series(0, :executions - 1) n
        CROSS JOIN LATERAL (SELECT
            CAST(:start AS timestamptz)
              + make_interval(secs => CAST((CAST(n AS bigint) * 2654435761) % :month_s AS int))
              + make_interval(secs => (n % 997) / 1000.0) AS start_at,
            CASE WHEN n % 10 = 0
                 THEN make_interval(secs => 600 + (CAST(n AS bigint) * 7919) % 6600)
                 ELSE make_interval(secs => 10 + (CAST(n AS bigint) * 40503) % 1790
                                            + (n % 7) / 1000.0) END AS dur) t"""),
    ("execution_segments", """
        INSERT INTO execution_segments (execution_id, seq, team_id, start_at, end_at, vcpu,
                                        memory_mib)
        SELECT execution_id, 0, team_id, start_at,
               CASE WHEN right(execution_id, 1) = '3'
                    THEN date_trunc('milliseconds', start_at + (end_at - start_at) / 2)
                    ELSE end_at END, vcpu, memory_mib
        FROM executions
        UNION ALL
        SELECT execution_id, 1, team_id,
               date_trunc('milliseconds', start_at + (end_at - start_at) / 2), end_at,
               vcpu * 2, memory_mib
        FROM executions WHERE right(execution_id, 1) = '3'"""),
    ("open executions", """
        INSERT INTO executions (execution_id, team_id, sandbox_id, template_id, start_at,
                                start_kind, vcpu, memory_mib, last_event_at, updated_at)
        SELECT 'exe_open_' || n, 'team_' || lpad(CAST(n * 19 % :teams AS text), 5, '0'),
               'sbx_open_' || n, 'base', CAST(:end AS timestamptz) - interval '3 hours',
               'created', 2, 1024, CAST(:end AS timestamptz) + interval '30 minutes',
               CAST(:end AS timestamptz) + interval '30 minutes'
        FROM generate_series(0, 499) n"""),
    ("open segments", """
        INSERT INTO execution_segments (execution_id, seq, team_id, start_at, end_at, vcpu,
                                        memory_mib)
        SELECT execution_id, 0, team_id, start_at, NULL, vcpu, memory_mib
        FROM executions WHERE execution_id LIKE 'exe_open_%'"""),
    # The lifecycle events those rows were made from (what `metering invoices verify` and the
    # close's check before finalizing read): created, updated halfway for the split ones,
    # killed; the open ones only created (their newest event is `executions.last_event_at`).
    ("lifecycle_events", """
        INSERT INTO lifecycle_events (source, id, type, subject, team_id, execution_id, time,
                                      data, digest)
        SELECT 'bench', e.execution_id || ':' || k.kind, 'sandbox.lifecycle.' || k.kind,
               e.sandbox_id, e.team_id, e.execution_id, k.time,
               jsonb_build_object('team_id', e.team_id, 'execution_id', e.execution_id)
                   || k.data, decode('00', 'hex')
        FROM executions e
        CROSS JOIN LATERAL (VALUES
            ('created', e.start_at, jsonb_build_object('vcpu', e.vcpu, 'memory_mib',
                                                       e.memory_mib, 'template_id',
                                                       e.template_id)),
            ('updated', CASE WHEN right(e.execution_id, 1) = '3' AND e.end_at IS NOT NULL
                                  AND e.execution_id NOT LIKE 'exe_late_%'
                             THEN date_trunc('milliseconds',
                                             e.start_at + (e.end_at - e.start_at) / 2) END,
             jsonb_build_object('vcpu', e.vcpu * 2)),
            ('killed', e.end_at, jsonb_build_object('reason', 'request'))
        ) AS k(kind, time, data)
        WHERE k.time IS NOT NULL AND e.execution_id LIKE 'exe_%'
          AND e.execution_id NOT LIKE 'exe_late_%'"""),
]

# Late usage: executions of the closed month whose events arrive after its close (written
# now, as ingest would), with their segments; their rollup deltas come from `roll_up`.
LATE = [
    ("late executions", """
        INSERT INTO executions (execution_id, team_id, sandbox_id, template_id, start_at,
                                start_kind, vcpu, memory_mib, disk_mib, end_at, end_kind,
                                end_reason, last_event_at)
        SELECT 'exe_late_' || n, 'team_' || lpad(CAST(n * 7 % :teams AS text), 5, '0'),
               'sbx_late_' || n, 'base', t.start_at, 'created', 2, 2048, 10240,
               t.start_at + interval '20 minutes', 'killed', 'request',
               t.start_at + interval '20 minutes'
        FROM generate_series(0, :late - 1) n
        CROSS JOIN LATERAL (SELECT CAST(:start AS timestamptz) + make_interval(
            secs => CAST((CAST(n AS bigint) * 2654435761) % (:month_s - 1200) AS int))
            AS start_at) t"""),
    ("late segments", """
        INSERT INTO execution_segments (execution_id, seq, team_id, start_at, end_at, vcpu,
                                        memory_mib)
        SELECT execution_id, 0, team_id, start_at, end_at, vcpu, memory_mib
        FROM executions WHERE execution_id LIKE 'exe_late_%'"""),
    ("late lifecycle_events", """
        INSERT INTO lifecycle_events (source, id, type, subject, team_id, execution_id, time,
                                      data, digest)
        SELECT 'bench', e.execution_id || ':' || k.kind, 'sandbox.lifecycle.' || k.kind,
               e.sandbox_id, e.team_id, e.execution_id, k.time,
               jsonb_build_object('team_id', e.team_id, 'execution_id', e.execution_id)
                   || k.data, decode('00', 'hex')
        FROM executions e
        CROSS JOIN LATERAL (VALUES
            ('created', e.start_at, jsonb_build_object('vcpu', e.vcpu, 'memory_mib',
                                                       e.memory_mib, 'template_id',
                                                       e.template_id)),
            ('updated', CASE WHEN right(e.execution_id, 1) = '3' AND e.end_at IS NOT NULL
                                  AND e.execution_id NOT LIKE 'exe_late_%'
                             THEN date_trunc('milliseconds',
                                             e.start_at + (e.end_at - e.start_at) / 2) END,
             jsonb_build_object('vcpu', e.vcpu * 2)),
            ('killed', e.end_at, jsonb_build_object('reason', 'request'))
        ) AS k(kind, time, data)
        WHERE k.time IS NOT NULL AND e.execution_id LIKE 'exe_late_%'"""),
]


def run_sql(url: str, statements: list[tuple[str, str]], params: dict[str, object]) -> None:
    engine = make_engine(url, pool_size=1)
    with engine.begin() as conn:
        for name, sql in statements:
            began = time.perf_counter()
            result = conn.execute(text(sql), params)
            log(f"  loaded {name}: {result.rowcount:,} rows in "
                f"{time.perf_counter() - began:.1f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()


ROLLUP_BATCH = 50_000


def roll_up(url: str, pattern: str) -> None:
    """Add the settled executions whose id is LIKE `pattern` to the hourly rollups, by the
    same function ingest and the settle job use."""
    engine = make_engine(url, pool_size=1)
    began = time.perf_counter()
    with transaction(make_sessionmaker(engine)) as session:
        ids = list(session.execute(text(
            "SELECT execution_id FROM executions WHERE execution_id LIKE :p "
            "ORDER BY execution_id"), {"p": pattern}).scalars())
        for i in range(0, len(ids), ROLLUP_BATCH):
            executions_repo.apply_rollup_delta(session, ids[i:i + ROLLUP_BATCH], +1)
    log(f"  rolled up {len(ids):,} executions in {time.perf_counter() - began:.1f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE usage_rollups"))
    engine.dispose()


def load(url: str, teams: int, executions: int, start: datetime) -> None:
    end = next_month_start(start)
    run_sql(url, LOAD, {"teams": teams, "executions": executions, "start": start, "end": end,
                        "month_s": int((end - start).total_seconds()),
                        "plan_at": start - timedelta(days=40)})
    roll_up(url, "exe_%")


def add_late(url: str, teams: int, late: int, start: datetime) -> None:
    end = next_month_start(start)
    run_sql(url, LATE, {"teams": teams, "late": late, "start": start,
                        "month_s": int((end - start).total_seconds())})
    roll_up(url, "exe_late_%")


def check(sessions: sessionmaker[Session], settings: Settings, period: str, now: datetime,
          teams: int, sample_size: int) -> int:
    """Every team with usage has its invoice; the usage invoices recorded for the month equals
    the month's usage read independently; sample teams re-rated alone match the bulk close.
    Answers the number of teams re-rated."""
    start = parse_period(period)[0]
    with transaction(sessions) as session:
        usage = usage_totals(session, start, next_month_start(start), now,
                                        timedelta(seconds=settings.stale_after_s))
        invoiced = {r[0] for r in session.execute(text(
            "SELECT team_id FROM invoices WHERE period = :p AND kind = 'period'"),
            {"p": period})}
        assert set(usage) <= invoiced
        recorded = session.execute(text(
            "SELECT sum(vcpu_ms), sum(mib_ms) FROM invoice_usage WHERE usage_period = :p"),
            {"p": period}).one()
        assert (int(recorded[0]), int(recorded[1])) == (
            sum(u.vcpu_ms for u in usage.values()), sum(u.mib_ms for u in usage.values()))
        sample: list[str] = []
        if sample_size:
            step = max(teams // sample_size, 1)
            sample = [f"team_{i:05d}" for i in range(0, teams, step)]
            sample += [f"team_{i:05d}" for i in (7, 107, 207) if i < teams]  # changed plan
        for team in sample:
            row = session.execute(text(
                "SELECT id, subtotal FROM invoices WHERE team_id = :t AND period = :p "
                "AND kind = 'period'"), {"t": team, "p": period}).one()
            again = service.rate_team_month(session, team, period, now, settings,
                                            exclude_invoice=row.id)
            assert again.rated.subtotal == row.subtotal, (team, again.rated.subtotal,
                                                          row.subtotal)
    return len(sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teams", type=int, default=10_000)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--late", type=int, default=10_000,
                        help="late executions added to the closed month before the next close")
    parser.add_argument("--chunk", type=int, default=month_close.DEFAULT_CHUNK)
    parser.add_argument("--sample", type=int, default=25,
                        help="teams re-rated one by one to check the bulk close")
    args = parser.parse_args()

    now = utc_now()
    # The month before last: both it and the month after it have ended.
    start = month_start(month_start(month_start(now) - timedelta(days=1)) - timedelta(days=1))
    period, following = format_period(start), format_period(next_month_start(start))
    url = fresh_database("metering_bench_close")
    engine = make_engine(url, pool_size=4)
    migrate.upgrade(engine)
    log(f"loading {period}: {args.teams:,} teams, {args.executions:,} executions")
    began = time.perf_counter()
    load(url, args.teams, args.executions, start)
    log(f"loaded in {time.perf_counter() - began:.1f} s")

    wire_billing()  # prices and plans from plan versions, as the service runs
    settings = Settings(database_url=url, run_scheduler=False)
    sessions = make_sessionmaker(engine)
    t0 = time.perf_counter()

    def progress(done: int, total: int, summary: month_close.CloseSummary) -> None:
        if done == total or done % (args.chunk * 4) == 0:
            log(f"  {done:>6}/{total} teams  {summary.invoices_made} invoices  "
                f"{time.perf_counter() - t0:5.1f} s")

    summary = month_close.close_period(sessions, period, settings, chunk_size=args.chunk,
                                       progress=progress)
    seconds = time.perf_counter() - t0
    assert not summary.failures, summary.failures[:5]
    checked = check(sessions, settings, period, now, args.teams, args.sample)
    with transaction(sessions) as session:
        lines = session.execute(text("SELECT count(*) FROM invoice_lines")).scalar_one()
    again = month_close.close_period(sessions, period, settings, chunk_size=args.chunk)

    log(f"adding {args.late:,} late executions to {period}, then closing {following}")
    add_late(url, args.teams, args.late, start)
    t0 = time.perf_counter()
    # Forced only in case this runs within the grace hours after a month's end.
    late = month_close.close_period(sessions, following, settings, chunk_size=args.chunk,
                                    progress=progress, force=True)
    late_seconds = time.perf_counter() - t0
    assert not late.failures, late.failures[:5]
    check(sessions, settings, period, now, args.teams, 0)  # late usage billed exactly once
    with transaction(sessions) as session:
        adjusted = session.execute(text(
            "SELECT count(DISTINCT i.team_id) FROM invoice_lines l JOIN invoices i "
            "ON i.id = l.invoice_id WHERE i.period = :p AND l.kind LIKE 'adjustment%'"),
            {"p": following}).scalar_one()

    print(f"machine: {machine()}")
    print(f"month {period}: {args.teams:,} teams, {args.executions + 500:,} executions "
          f"(500 still open), {lines:,} invoice lines")
    print(f"close {period}: {seconds:.1f} s, {summary.teams_considered / seconds:,.0f} teams/s, "
          f"{summary.invoices_made:,} invoices made, total {summary.as_dict()['total_amount']}")
    print(f"  checks: recorded usage = month usage; {checked} teams re-rated one by one match")
    print(f"  closed again: {again.seconds:.1f} s, {again.invoices_made} made, "
          f"{again.already_existed:,} already existed")
    print(f"close {following} after {args.late:,} late executions for {period}: "
          f"{late_seconds:.1f} s, {late.invoices_made:,} invoices, {adjusted:,} with adjustments "
          f"for {period}; recorded usage of {period} = its usage again")
    engine.dispose()


if __name__ == "__main__":
    main()
