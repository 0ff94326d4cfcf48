"""The enforcement sweep's own cost at fleet size: duration, billing looks and statements per
sweep, with 1,000 teams and 20,000 running sandboxes by default.

    .venv/bin/python -m bench.sweep [--teams 1000] [--sandboxes 20] [--seconds 40]

The fleet is made through the real ingest and the real billing (plans, credit grants, spend
limits): a quarter of the teams are Hobby teams with earlier usage (their credit is read on a
look), a quarter Pro teams with a monthly spend limit (their month's spend is read), a quarter
Pro teams without one (limits only), a quarter fresh Hobby teams; 1 % of the teams are
blocked, and one sandbox in twenty teams passes Hobby's 1 h maximum during the run (at
instants spread over 20 s, `--lead` seconds after setup began). Then the sweep runs every
second, as the worker runs it, on a cold watchlist (a worker just started: every team is
looked at as soon as the budget allows).
Nothing else runs: this is the sweep's cost alone; `bench.enforcement` measures kill-order
latency with the other jobs on.

Prints the first sweeps, then p50/p99/max of the sweep's duration, looks and statements per
sweep (every statement the driver sends, pipelined ones included), the kill orders issued
with the delay from each execution's deadline, and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from bench.common import fresh_database, iso, log, machine, now_utc, percentile

STALE_S = 900  # the fleet stays running for the whole run without heartbeats


def event(kind: str, team: str, name: str, moment: datetime, **data: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"{name}-{kind}-{iso(moment)}",
            "source": "orchestrator/bench", "subject": f"sbx_{name}", "time": iso(moment),
            "type": "sandbox.host_stats" if kind == "host_stats" else f"sandbox.lifecycle.{kind}",
            "data": {"team_id": team, "execution_id": f"exe_{name}", **data}}


class StatementCounter:
    """Counts every statement psycopg sends from this process (pipelined ones too)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        original = psycopg.Cursor.execute
        counter = self

        def execute(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            with counter._lock:
                counter.count += 1
            return original(cursor, *args, **kwargs)

        psycopg.Cursor.execute = execute  # type: ignore[method-assign,assignment]

    @contextmanager
    def measure(self, into: list[int]) -> Iterator[None]:
        before = self.count
        try:
            yield
        finally:
            into.append(self.count - before)


def analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teams", type=int, default=1000)
    parser.add_argument("--sandboxes", type=int, default=20, help="running per team")
    parser.add_argument("--seconds", type=int, default=40, help="sweeps, one a second")
    parser.add_argument("--lead", type=int, default=90,
                        help="seconds from the start of setup to the first hour reached")
    args = parser.parse_args()
    os.environ["METERING_STALE_AFTER_S"] = str(STALE_S)

    from billing.app import wire_billing
    from billing.plans.service import TeamUpdate, put_team
    from metering import migrate
    from metering.config import Settings
    from metering.db import make_engine, make_sessionmaker, transaction
    from metering.enforcement import jobs as jobs_enforcement
    from metering.enforcement.service import WATCH
    from metering.enforcement.watch import Watchlist
    from metering.ingest import jobs
    from metering.ingest import service as ingest
    from metering.teams.service import block_team

    url = fresh_database("metering_bench_sweep")
    engine = make_engine(url, pool_size=4)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    wire_billing()
    settings = Settings(database_url=url)

    start = now_utc().replace(microsecond=0)
    month = start.replace(day=1, hour=0, minute=0, second=0)
    # The hours are reached during the sweeps (setup takes 20-60 s on this machine).
    first_deadline = start + timedelta(seconds=args.lead)
    deadlines: dict[str, datetime] = {}
    setup: list[dict[str, Any]] = []
    with transaction(sessions) as session:
        for t in range(args.teams):
            team = f"team_{t:04d}"
            kind = t % 4
            plan = "pro" if kind in (1, 2) else "hobby"
            limit = Decimal(500) if kind == 1 else None
            put_team(session, team, TeamUpdate(
                name=team, email=None, plan=plan, effective_at=month - timedelta(days=40),
                spend_limit=limit, clear_spend_limit=False, collection_method=None))
    for t in range(args.teams):
        team = f"team_{t:04d}"
        if t % 4 in (0, 1):
            # Earlier usage: last month and this month, settled (rollups and partial hours).
            for h, (lo, hi) in enumerate([(month - timedelta(days=3, minutes=17),
                                           month - timedelta(days=2, minutes=41)),
                                          (start - timedelta(hours=5, minutes=13),
                                           start - timedelta(hours=3, minutes=29))]):
                name = f"{team}_h{h}"
                setup.append(event("created", team, name, lo, vcpu=2, memory_mib=2048))
                setup.append(event("killed", team, name, hi, reason="request"))
        for s in range(args.sandboxes):
            name = f"{team}_{s}"
            started = start - timedelta(seconds=30 + (t * 37 + s * 11) % 1800)
            if s == 0 and t % 20 == 3:  # a Hobby team's sandbox reaching its hour in the run
                deadline = first_deadline + timedelta(
                    seconds=(t // 20) % 20)
                started = deadline - timedelta(hours=1)
                deadlines[f"exe_{name}"] = deadline
            setup.append(event("created", team, name, started, vcpu=1 + s % 4,
                               memory_mib=512 * (1 + s % 4)))
            setup.append(event("host_stats", team, name, start, cpu_pct=10.0))
    for i in range(0, len(setup), 5000):
        with transaction(sessions) as session:
            ingest.ingest(session, setup[i:i + 5000], now_utc(), settings.future_tolerance_s)
    blocked = [f"team_{t:04d}" for t in range(0, args.teams, 100)]
    with transaction(sessions) as session:
        for team in blocked:
            block_team(session, team, "unpaid_invoice", now_utc())
    jobs.refresh_liveness(sessions)
    analyze(url)

    counter = StatementCounter()
    watch = Watchlist(credit_thresholds=WATCH.credit_thresholds,
                      spend_thresholds=WATCH.spend_thresholds,
                      look_budget_s=WATCH.look_budget_s, limits_budget_s=WATCH.limits_budget_s)
    load_before = os.getloadavg()
    if now_utc() > first_deadline - timedelta(seconds=5):
        log("setup took longer than --lead: the first hours were reached before the sweeps")
    # Sweep until the last hour has been reached, and at least --seconds.
    sweeps = max(args.seconds, int((max(deadlines.values(), default=start) - now_utc())
                                   .total_seconds()) + 5)
    log(f"{machine()}; {args.teams} teams x {args.sandboxes} running sandboxes; "
        f"{len(deadlines)} reach their hour during the run; load {load_before[0]:.2f}")
    durations: list[float] = []
    statements: list[int] = []
    looks: list[int] = []
    issued: dict[str, tuple[str, datetime]] = {}
    running: list[int] = []
    next_at = time.monotonic()
    for n in range(sweeps):
        began = time.perf_counter()
        with counter.measure(statements):
            result = jobs_enforcement.sweep_enforcement(sessions, STALE_S, watch)
        durations.append(time.perf_counter() - began)
        if n == 0:
            # Statistics as autovacuum keeps them: `kill_orders` was empty when analyzed
            # above, and without statistics of its first rows the planner probes it with a
            # sequential scan per running execution (~0.5 s a sweep at 20,000).
            analyze(url)
        looks.append(result.looks)
        running.append(result.executions)
        for order in result.kill_orders:
            issued[order.execution_id] = (order.reason, order.issued_at)
        next_at += 1.0
        time.sleep(max(0.0, next_at - time.monotonic()))
    load_after = os.getloadavg()
    engine.dispose()

    print(f"machine: {machine()}; load average before {load_before[0]:.2f} "
          f"{load_before[1]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f}")
    print(f"fleet: {args.teams} teams, {running[0]:,} running sandboxes judged in the first "
          f"sweep ({args.sandboxes} per team)")
    print("first sweeps (cold watchlist): " + ", ".join(
        f"{d * 1000:.0f} ms/{n} looks/{q} statements"
        for d, n, q in list(zip(durations, looks, statements, strict=True))[:5]))
    steady = durations[5:] or durations
    print(f"sweep duration after the first 5: p50 {percentile(steady, 0.5) * 1000:.0f} ms  "
          f"p99 {percentile(steady, 0.99) * 1000:.0f} ms  max {max(steady) * 1000:.0f} ms  "
          f"(all {len(durations)}: p50 {percentile(durations, 0.5) * 1000:.0f} ms, "
          f"max {max(durations) * 1000:.0f} ms; over 1 s: {sum(d > 1 for d in durations)})")
    rest_looks = looks[5:] or looks
    rest_statements = statements[5:] or statements
    print(f"looks per sweep after the first 5: mean {sum(rest_looks) / len(rest_looks):.0f}, "
          f"max {max(rest_looks)}; teams looked at in the first 5 sweeps: {sum(looks[:5])}")
    print(f"statements per sweep after the first 5: p50 {percentile([float(q) for q in rest_statements], 0.5):.0f}  "
          f"max {max(rest_statements)}  (first {statements[0]})")
    reasons: dict[str, int] = {}
    for reason, _ in issued.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    late = [(issued[e][1] - d).total_seconds() for e, d in deadlines.items() if e in issued]
    print(f"kill orders: {dict(sorted(reasons.items()))}; max duration of {len(deadlines)} "
          f"due: {len(late)} issued" + (
              f", delay p50 {percentile(late, 0.5):.2f} s, max {max(late):.2f} s" if late
              else ""))


if __name__ == "__main__":
    main()
