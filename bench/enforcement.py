"""Kill-order latency: how long after the moment a sandbox must stop is its kill order issued
(and delivered to the orchestrator's webhook)?

    .venv/bin/python bench/enforcement.py [--teams 200] [--sandboxes 5] [--spread 20]

Half the teams are Hobby teams whose credit, counting what their running sandboxes accrue,
reaches zero at a known instant; the other half run sandboxes that pass Hobby's 1 h maximum
at known instants. The instants are spread over `--spread` seconds. The service runs
in-process with the real billing (plans, the $100 Hobby grant, live credit): events go through
the real ingest, and the worker's jobs run on their production intervals (enforcement sweep
and webhook delivery every second, liveness every 2.5 s) while a fleet heartbeat keeps every
sandbox alive. A real HTTP receiver verifies each webhook's signature.

Prints, per reason, p50/p95/max seconds from the moment to the kill order's `issued_at` and
to its webhook's arrival, and the sweep's own duration.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import text

from bench.common import fresh_database, iso, log, machine, now_utc, percentile
from billing.app import wire_billing
from metering import migrate
from metering.config import Settings
from metering.db import make_engine, make_sessionmaker, transaction
from metering.enforcement import jobs as jobs_enforcement
from metering.enforcement.delivery import DeliveryPolicy
from metering.enforcement.signing import verify_signature
from metering.errors import InvalidSignature
from metering.ingest import jobs
from metering.ingest import service as ingest

SECRET = "whsec_bench"
VCPU, MEMORY_MIB = 2, 1024
# Default prices: 2 vCPU + 1 GiB per second; the history execution runs 8 vCPU + 8 GiB.
RATE = Decimal(VCPU) * Decimal("0.000014") + Decimal(MEMORY_MIB) / 1024 * Decimal("0.0000045")
BIG_RATE_PER_MS = (8 * Decimal("0.000014") + 8 * Decimal("0.0000045")) / 1000
GRANT = Decimal(100)  # Hobby's one-time credit


def event(kind: str, team: str, name: str, moment: datetime, **data: Any) -> dict[str, Any]:
    kind_type = "sandbox.host_stats" if kind == "host_stats" else f"sandbox.lifecycle.{kind}"
    return {"specversion": "1.0", "id": f"{name}-{kind}-{iso(moment)}",
            "source": "orchestrator/bench", "type": kind_type, "subject": f"sbx_{name}",
            "time": iso(moment), "data": {"team_id": team, "execution_id": f"exe_{name}", **data}}


def every(interval: float, job: Callable[[], Any], stop: threading.Event,
          durations: list[float] | None = None) -> threading.Thread:
    """Run `job` at a fixed rate, as the worker's interval scheduler does."""
    def loop() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                job()
            except Exception as exc:
                log("job failed:", repr(exc))
            if durations is not None:
                durations.append(time.perf_counter() - started)
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teams", type=int, default=200)
    parser.add_argument("--sandboxes", type=int, default=5)
    parser.add_argument("--spread", type=float, default=20.0)
    parser.add_argument("--lead", type=float, default=30.0,
                        help="seconds from setup to the first moment (the worker warms up)")
    args = parser.parse_args()

    url = fresh_database("metering_bench_enforcement")
    engine = make_engine(url, pool_size=8)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    wire_billing()
    settings = Settings(database_url=url)

    # The receiver: the first arrival of each kill order, signatures checked.
    arrivals: dict[str, float] = {}
    bad = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                verify_signature(SECRET, self.headers.get("Metering-Signature"), body)
            except InvalidSignature:
                bad[0] += 1
                self.send_response(400)
                self.end_headers()
                return
            message = json.loads(body)
            if message["type"] == "kill_order":
                with lock:
                    arrivals.setdefault(message["data"]["id"], time.time())
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.orchestrator_webhook_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    settings.orchestrator_webhook_secret = SECRET

    start = now_utc().replace(microsecond=0)
    first = start + timedelta(seconds=args.lead)
    running_since = start - timedelta(seconds=10)
    moments: dict[str, tuple[str, datetime]] = {}  # execution -> (expected reason, moment)
    sandboxes: list[tuple[str, str]] = []
    setup: list[dict[str, Any]] = []
    half = args.teams // 2
    for t in range(args.teams):
        team = f"team_{t:04d}"
        at = first + timedelta(seconds=args.spread * (t % half) / max(half, 1))
        if t < half:
            # Credit: history usage leaves exactly enough for the running sandboxes to reach
            # zero at about `at`; the exact instant follows from the whole milliseconds.
            team_rate = RATE * args.sandboxes
            left = team_rate * Decimal((at - running_since).total_seconds())
            history_ms = int((GRANT - left) / BIG_RATE_PER_MS)
            history_end = running_since - timedelta(seconds=60)
            setup.append(event("created", team, f"{team}_hist",
                               history_end - timedelta(milliseconds=history_ms),
                               vcpu=8, memory_mib=8192))
            setup.append(event("killed", team, f"{team}_hist", history_end, reason="request"))
            remaining = GRANT - BIG_RATE_PER_MS * history_ms
            moment = running_since + timedelta(seconds=float(remaining / team_rate))
            reason, started = "credit_exhausted", running_since
        else:
            reason, started, moment = "max_duration", at - timedelta(hours=1), at
        for s in range(args.sandboxes):
            name = f"{team}_{s}"
            sandboxes.append((team, name))
            moments[f"exe_{name}"] = (reason, moment)
            setup.append(event("created", team, name, started, vcpu=VCPU, memory_mib=MEMORY_MIB))

    def heartbeat() -> None:
        moment = now_utc()
        batch = [event("host_stats", team, name, moment, cpu_pct=50.0)
                 for team, name in sandboxes]
        with transaction(sessions) as session:
            ingest.ingest(session, batch, now_utc(), settings.future_tolerance_s)

    for i in range(0, len(setup), 5000):
        with transaction(sessions) as session:
            ingest.ingest(session, setup[i:i + 5000], now_utc(), settings.future_tolerance_s)
    heartbeat()
    jobs.refresh_liveness(sessions)
    log(f"{machine()}; {args.teams} teams x {args.sandboxes} sandboxes; first moment in "
        f"{(first - now_utc()).total_seconds():.1f} s, spread {args.spread} s")

    stop = threading.Event()
    sweep_times: list[float] = []
    policy = DeliveryPolicy(max_age_s=settings.webhook_max_age_s)
    threads = [
        every(settings.sweep_interval_s,
              lambda: jobs_enforcement.sweep_enforcement(sessions, settings.stale_after_s),
              stop, sweep_times),
        every(settings.sweep_interval_s,
              lambda: jobs_enforcement.deliver_webhooks(sessions, settings, policy), stop),
        every(max(settings.fold_interval_s / 2, 1.0), lambda: jobs.refresh_liveness(sessions),
              stop),
        every(5.0, heartbeat, stop),
    ]
    last_moment = max(m for _, m in moments.values())
    while now_utc() < last_moment + timedelta(seconds=8):
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    server.shutdown()

    with transaction(sessions) as session:
        rows = session.execute(text(
            "SELECT id, execution_id, reason, issued_at FROM kill_orders")).all()
    engine.dispose()

    wrong = [r for r in rows if r.execution_id not in moments
             or moments[r.execution_id][0] != r.reason]
    missing = set(moments) - {r.execution_id for r in rows}
    print(f"machine: {machine()}")
    print(f"fleet: {args.teams} teams x {args.sandboxes} running sandboxes "
          f"({len(moments)} executions); moments spread over {args.spread} s")
    print(f"kill orders: {len(rows)} issued, {len(missing)} missing, {len(wrong)} wrong or "
          f"extra; webhook signatures rejected: {bad[0]}")
    for reason in ("credit_exhausted", "max_duration"):
        mine = [r for r in rows if r.reason == reason and r.execution_id in moments]
        issued = [(r.issued_at - moments[r.execution_id][1]).total_seconds() for r in mine]
        delivered = [arrivals[r.id] - moments[r.execution_id][1].timestamp()
                     for r in mine if r.id in arrivals]
        if not issued:
            continue
        print(f"{reason:17s} issued    p50 {percentile(issued, 0.5):.2f} s  "
              f"p95 {percentile(issued, 0.95):.2f} s  max {max(issued):.2f} s  "
              f"(min {min(issued):.2f} s, n={len(issued)})")
        if delivered:
            print(f"{reason:17s} delivered p50 {percentile(delivered, 0.5):.2f} s  "
                  f"p95 {percentile(delivered, 0.95):.2f} s  max {max(delivered):.2f} s  "
                  f"(n={len(delivered)})")
    busy = [d for d in sweep_times]
    print(f"sweep duration: p50 {percentile(busy, 0.5) * 1000:.0f} ms  "
          f"p95 {percentile(busy, 0.95) * 1000:.0f} ms  max {max(busy) * 1000:.0f} ms "
          f"({len(busy)} sweeps)")


if __name__ == "__main__":
    main()
