"""The worker against real processes: `metering serve`, `metering worker`, PostgreSQL and the
Stripe double each in their own process, as in production.

- A worker SIGKILLed in the middle of a month close, and another in the middle of a Stripe
  sync, then restarted: every invoice exists once, with the right totals, and is in Stripe once.
- Two workers side by side for more than an hour of simulated time (`METERING_SIM_CLOCK`, see
  `metering.core.clock`) while a simulated orchestrator runs sandboxes through admissions,
  samples and kill orders, across a month boundary: every kill order, webhook message, invoice
  and Stripe sync happens once.

A worker restarted after a crash picks up what the dead one held only once its claims run out:
a month close whose heartbeat is 15 minutes old, invoices whose 10-minute Stripe lease passed.
So the restarted worker of the first two tests runs on a clock 20 minutes ahead: the restart
as it happens in production, some minutes later, without waiting for them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from metering.core.clock import SimClock, format_period, month_start
from tests.faults.conftest import (
    Service,
    Stoppable,
    StripeDoubleProcess,
    WebhookReceiver,
    Worker,
    iso,
    sim_clock_env,
    wait_for,
)

pytestmark = pytest.mark.faults

VCPU_SECOND = Decimal("0.000014")  # the seeded plans' prices
GIB_SECOND = Decimal("0.0000045")
PRO_FEE = Decimal("150")
CENT = Decimal("0.01")


# --------------------------------------------------------------------------- shared plumbing


def query(database_url: str, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params or {}).fetchall()


def scalar(database_url: str, sql: str, params: dict[str, Any] | None = None) -> Any:
    return query(database_url, sql, params)[0][0]


def team_id(i: int) -> str:
    return f"team_{i:05d}"


def load_teams(database_url: str, teams: int, pro: int, plan_at: datetime) -> None:
    """Teams 0..pro-1 on Pro, the rest on Hobby with its $100 plan credit, all from `plan_at`,
    straight into PostgreSQL as `bench/close.py` loads them (thousands of teams through
    `PUT /v1/teams` would take most of the test's time; their usage goes through the API)."""
    team = "'team_' || lpad(CAST(i AS text), 5, '0')"
    with psycopg.connect(database_url) as conn:
        conn.execute(f"""
            INSERT INTO teams (id, name, email, created_at, auto_created)
            SELECT {team}, 'Team ' || i, {team} || '@example.com', %(at)s, false
            FROM generate_series(0, %(teams)s - 1) i""", {"at": plan_at, "teams": teams})
        conn.execute(f"""
            INSERT INTO team_plans (team_id, plan_code, effective_at)
            SELECT {team}, CASE WHEN i < %(pro)s THEN 'pro' ELSE 'hobby' END, %(at)s
            FROM generate_series(0, %(teams)s - 1) i""",
                     {"at": plan_at, "teams": teams, "pro": pro})
        conn.execute(f"""
            INSERT INTO credit_grants (id, team_id, amount, currency, priority, granted_at,
                                       reason, kind, idempotency_key)
            SELECT 'cg_faults_' || i, {team}, 100, 'usd', 0, %(at)s, 'hobby plan credit',
                   'plan', 'plan:hobby:' || {team}
            FROM generate_series(%(pro)s, %(teams)s - 1) i""",
                     {"at": plan_at, "teams": teams, "pro": pro})


@dataclass(frozen=True)
class PastExecution:
    team: str
    execution: str
    start: datetime
    seconds: int
    vcpu: int
    memory_mib: int

    def events(self) -> list[dict[str, Any]]:
        def event(kind: str, moment: datetime, **data: Any) -> dict[str, Any]:
            return {"specversion": "1.0", "id": f"{kind}-{self.execution}",
                    "source": "orchestrator/faults/workers", "type": f"sandbox.lifecycle.{kind}",
                    "subject": f"sbx_{self.execution}", "time": iso(moment),
                    "data": {"team_id": self.team, "execution_id": self.execution, **data}}

        return [event("created", self.start, vcpu=self.vcpu, memory_mib=self.memory_mib,
                      template_id="base"),
                event("killed", self.start + timedelta(seconds=self.seconds), reason="request")]


def month_of_usage(teams: int, month: datetime) -> list[PastExecution]:
    """One or two ended executions per team inside the month (which has >= 28 days)."""
    executions = []
    for i in range(teams):
        for k in range(1 + (i % 3 == 0)):
            n = i * 2 + k
            executions.append(PastExecution(
                team_id(i), f"exe_{n:06d}",
                month + timedelta(hours=(n * 7) % 600, milliseconds=n % 997),
                60 + (n * 37) % 3000, 1 + n % 4, 512 * (1 + n % 4)))
    return executions


def post_events(url: str, key: str, events: Sequence[dict[str, Any]], batch: int = 2000,
                clients: int = 2) -> float:
    """Post in batches from `clients` threads; answer the seconds it took."""
    started = time.monotonic()
    batches = [list(events[i:i + batch]) for i in range(0, len(events), batch)]
    failures: list[str] = []

    def run(mine: list[list[dict[str, Any]]]) -> None:
        with httpx.Client(base_url=url, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            for chunk in mine:
                body = http.post("/v1/events", json=chunk).json()
                if body.get("accepted") != len(chunk):
                    failures.append(str(body)[:500])

    threads = [threading.Thread(target=run, args=(batches[c::clients],)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    return time.monotonic() - started


def expected_invoices(executions: Sequence[PastExecution], pro: int
                      ) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    """Per team (subtotal, credits applied, total), worked out independently of the service:
    one usage line per resource rounded half-up to the cent, Pro's $150 fee, Hobby's usage
    paid by its $100 credit."""
    vcpu_ms: Counter[str] = Counter()
    mib_ms: Counter[str] = Counter()
    for e in executions:
        vcpu_ms[e.team] += e.vcpu * e.seconds * 1000
        mib_ms[e.team] += e.memory_mib * e.seconds * 1000
    expected = {}
    for team in vcpu_ms:
        usage = ((Decimal(vcpu_ms[team]) / 1000 * VCPU_SECOND).quantize(CENT, ROUND_HALF_UP)
                 + (Decimal(mib_ms[team]) / 1024 / 1000 * GIB_SECOND).quantize(CENT,
                                                                               ROUND_HALF_UP))
        if int(team.removeprefix("team_")) < pro:
            expected[team] = (PRO_FEE + usage, Decimal(0), PRO_FEE + usage)
        else:
            expected[team] = (usage, usage, Decimal(0))
    return expected


def start_all(*starts: Any) -> None:
    """Start processes side by side (each start waits for its process to be ready)."""
    errors: list[BaseException] = []

    def run(start: Any) -> None:
        try:
            start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in starts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def mid_month_clock() -> SimClock:
    """Rate 1, on the 15th of this month at noon: the month before has long ended (its close
    is due whatever the real date) and no month ends while the test runs."""
    return SimClock.starting(month_start(datetime.now(UTC)).replace(day=15, hour=12))


def shifted(clock: SimClock, minutes: int) -> SimClock:
    """The same clock, `minutes` ahead: a process restarted that much later."""
    return SimClock(clock.real_anchor_us, clock.sim_anchor_us + minutes * 60_000_000, clock.rate)


# --------------------------------------------------------------------------- (a) month close


CLOSE_TEAMS = 3000
CLOSE_PRO = 40


def test_worker_killed_mid_close_then_restarted_makes_each_invoice_once(
    fault_database: str, services: list[Service], processes: list[Stoppable], tmp_path: Path
) -> None:
    clock = mid_month_clock()
    month = month_start(clock.now() - timedelta(days=20))
    period = format_period(month)
    api = Service(fault_database, scheduler=False, env=sim_clock_env(clock))
    services.append(api)
    api.start()
    load_teams(fault_database, CLOSE_TEAMS, CLOSE_PRO, month)
    executions = month_of_usage(CLOSE_TEAMS, month)
    events = [e for x in executions for e in x.events()]
    ingest_s = post_events(api.url, api.create_key("ingest"), events)
    api.stop()  # not needed any more

    def invoices() -> int:
        return int(scalar(fault_database, "SELECT count(*) FROM invoices WHERE period = %(p)s",
                          {"p": period}))

    # The worker's own job closes last month; the kill lands once a third of it exists.
    env = {**sim_clock_env(clock), "METERING_CLOSE_INTERVAL_S": "0.2"}
    first = Worker(fault_database, tmp_path / "worker-1.log", env)
    processes.append(first)
    first.start()
    started = time.monotonic()
    wait_for(lambda: invoices() >= CLOSE_TEAMS // 3, 60, "a third of the invoices",
             interval=0.01)
    first.kill()
    killed_after = time.monotonic() - started
    at_kill = invoices()
    runs = query(fault_database, "SELECT status FROM invoice_close_runs")
    assert 0 < at_kill < CLOSE_TEAMS, at_kill
    assert runs == [("running",)]  # dead, its heartbeat going stale

    # Restarted 20 minutes later (a run with a heartbeat older than 15 minutes is taken over).
    second = Worker(fault_database, tmp_path / "worker-2.log",
                    {**env, **sim_clock_env(shifted(clock, 20))})
    processes.append(second)
    second.start()
    resumed = time.monotonic()
    wait_for(lambda: scalar(fault_database,
                            "SELECT count(*) FROM invoice_close_runs WHERE status <> 'running'")
             > 0, 60, "the restarted worker's close to finish")
    resume_s = time.monotonic() - resumed
    second.stop()

    run = query(fault_database, """
        SELECT status, teams_considered, invoices_made, already_existed, failed
        FROM invoice_close_runs WHERE status <> 'running'""")
    rows = query(fault_database, """
        SELECT team_id, count(*), min(subtotal), min(credits_applied), min(total),
               min(number), min(status)
        FROM invoices WHERE period = %(p)s AND kind = 'period' GROUP BY team_id""",
                 {"p": period})
    applied = dict(query(fault_database, """
        SELECT team_id, sum(amount) FROM credit_applications WHERE period = %(p)s
        GROUP BY team_id""", {"p": period}))
    finalized = query(fault_database, """
        SELECT count(*), count(DISTINCT payload->'data'->>'invoice_id') FROM outbox_messages
        WHERE type = 'invoice.finalized'""")[0]
    expected = expected_invoices(executions, CLOSE_PRO)
    numbers = sorted(int(r[5].rsplit("-", 1)[1]) for r in rows)
    print(f"\n[faults] month close of {CLOSE_TEAMS:,} teams ({len(events):,} events posted in "
          f"{ingest_s:.1f} s): worker SIGKILLed {killed_after:.1f} s after its start with "
          f"{at_kill:,} invoices made; restarted 20 simulated minutes later, it took over the "
          f"crashed run and finished in {resume_s:.1f} s: {run[0][2]:,} made, "
          f"{run[0][3]:,} already existed, {run[0][4]} failed; {invoices():,} invoices, "
          f"numbers 1..{numbers[-1]:,}", flush=True)

    assert run == [("completed", CLOSE_TEAMS, CLOSE_TEAMS - at_kill, at_kill, 0)]
    assert invoices() == CLOSE_TEAMS
    assert all(r[1] == 1 for r in rows), [r for r in rows if r[1] != 1][:5]
    assert {r[0]: (r[2], r[3], r[4]) for r in rows} == expected
    assert {r[6] for r in rows} == {"finalized"}
    assert numbers == list(range(1, CLOSE_TEAMS + 1))  # gap-free: the killed chunk left none
    # Credits were applied once, by the invoice that says so.
    assert applied == {t: c for t, (_, c, _) in expected.items() if c}
    assert finalized == (CLOSE_TEAMS, CLOSE_TEAMS)  # one invoice.finalized message each


# --------------------------------------------------------------------------- (a) Stripe sync


SYNC_PRO = 60
SYNC_HOBBY = 20


def test_worker_killed_mid_stripe_sync_then_restarted_syncs_each_invoice_once(
    fault_database: str, services: list[Service], processes: list[Stoppable], tmp_path: Path
) -> None:
    clock = mid_month_clock()
    month = month_start(clock.now() - timedelta(days=20))
    period = format_period(month)
    teams = SYNC_PRO + SYNC_HOBBY
    double = StripeDoubleProcess(tmp_path / "stripe-double.log", seed=11)
    processes.append(double)
    api = Service(fault_database, scheduler=False, env=sim_clock_env(clock))
    services.append(api)
    start_all(double.start, api.start)
    load_teams(fault_database, teams, SYNC_PRO, month)
    executions = month_of_usage(teams, month)
    post_events(api.url, api.create_key("ingest"), [e for x in executions for e in x.events()])
    api.stop()

    def synced_or_stuck() -> bool:
        """Every invoice synced, or one failed for good (waiting for a person)."""
        row = query(fault_database, """
            SELECT count(*) FILTER (WHERE status IN ('synced', 'paid')),
                   count(*) FILTER (WHERE status = 'sync_failed' AND next_sync_at IS NULL)
            FROM invoices""")[0]
        return bool(row[0] == teams or row[1] > 0)

    def a_quarter_in_and_one_half_way() -> bool:
        """A quarter of the invoices in Stripe, and one of them not collected yet."""
        row = query(fault_database, """
            SELECT count(*), count(*) FILTER (WHERE collected_at IS NULL)
            FROM stripe_invoices""")[0]
        return bool(row[0] >= SYNC_PRO // 4 and row[1] > 0)

    # One worker closes the month and syncs it; the kill lands a quarter into the sync, while
    # an invoice is half-way (in Stripe, not paid yet).
    env = {**sim_clock_env(clock), **double.env(), "METERING_CLOSE_INTERVAL_S": "0.2",
           "METERING_STRIPE_SYNC_INTERVAL_S": "0.2"}
    first = Worker(fault_database, tmp_path / "worker-1.log", env)
    processes.append(first)
    first.start()
    wait_for(a_quarter_in_and_one_half_way, 90, "a quarter of the invoices in Stripe",
             interval=0.01)
    first.kill()
    at_kill = query(fault_database, """
        SELECT count(*) FILTER (WHERE status IN ('synced', 'paid')),
               count(*) FILTER (WHERE status = 'finalized' AND sync_attempts > 0),
               count(*) FILTER (WHERE status = 'finalized' AND sync_attempts = 0)
        FROM invoices""")[0]
    remote_at_kill = Counter(i["status"] for i in double.state()["invoices"])
    assert at_kill[0] < teams and remote_at_kill.total() < SYNC_PRO, (at_kill, remote_at_kill)

    # Restarted 20 minutes later: the dead worker's 10-minute leases have run out.
    second = Worker(fault_database, tmp_path / "worker-2.log",
                    {**env, **sim_clock_env(shifted(clock, 20))})
    processes.append(second)
    second.start()
    resumed = time.monotonic()
    def where_each_stands() -> str:
        """The invoices not synced yet, Stripe's requests, and the second worker's output."""
        pending = query(fault_database, """
            SELECT id, status, stripe_status, sync_attempts, next_sync_at, sync_error
            FROM invoices WHERE status NOT IN ('synced', 'paid') ORDER BY id""")
        counts = double.requests()["counts"]
        return (f"not synced: {pending}\nStripe requests: {counts}\n"
                f"worker 2 said: {second.log.read_text(errors='replace')[-4000:]}")

    wait_for(synced_or_stuck, 90, "every invoice synced", explain=where_each_stands)
    resume_s = time.monotonic() - resumed
    second.stop()

    ours = {r[0]: r[1:] for r in query(fault_database, """
        SELECT i.id, i.team_id, i.total, i.status, i.stripe_status, i.stripe_invoice_id,
               (SELECT count(*) FROM invoice_lines l WHERE l.invoice_id = i.id),
               (SELECT count(*) FROM stripe_invoices s WHERE s.invoice_id = i.id),
               i.sync_error
        FROM invoices i WHERE i.period = %(p)s""", {"p": period})}
    charged = {i: r for i, r in ours.items() if r[1] > 0}
    state = double.state()
    log = double.requests()
    remote: dict[str, list[dict[str, Any]]] = {}
    for invoice in state["invoices"]:
        remote.setdefault(invoice["metadata"]["invoice_id"], []).append(invoice)
    items = Counter((i["metadata"]["invoice_id"], i["metadata"]["line_position"])
                    for i in state["invoice_items"])
    customers = Counter(c["metadata"]["team_id"] for c in state["customers"])
    paid = query(fault_database, """
        SELECT count(*), count(DISTINCT payload->'data'->>'invoice_id') FROM outbox_messages
        WHERE type = 'invoice.paid'""")[0]
    replayed = sum(1 for r in log["requests"] if r["replayed"])
    print(f"\n[faults] Stripe sync of {len(ours)} invoices ({len(charged)} charged, "
          f"{len(ours) - len(charged)} at zero): worker SIGKILLed with {at_kill[0]} synced, "
          f"{at_kill[1]} claimed in flight, {at_kill[2]} not started; Stripe then held "
          f"{dict(remote_at_kill)}; restarted 20 simulated minutes later: "
          f"{dict(Counter(r[2] for r in ours.values()))} in {resume_s:.1f} s; Stripe: "
          f"{len(state['invoices'])} invoices, "
          f"{len(state['customers'])} customers, {len(state['invoice_items'])} items, "
          f"{sum(log['counts'].values())} requests of which {replayed} idempotent replays",
          flush=True)

    assert len(ours) == teams and len(charged) == SYNC_PRO
    assert {r[2] for r in ours.values()} == {"paid", "synced"}, {
        i: r[7] for i, r in ours.items() if r[7]}
    assert all(r[2] == "paid" for r in charged.values())
    assert all(r[3] == "skipped_zero_total" and r[6] == 0
               for i, r in ours.items() if i not in charged)
    # Each charged invoice is in Stripe exactly once, as the Stripe invoice we recorded, with
    # each line once and our total to the cent, and paid; one customer per team.
    assert {i: len(v) for i, v in remote.items()} == dict.fromkeys(charged, 1)
    for invoice_id, (_, total, _, _, stripe_id, lines, parts, _) in charged.items():
        (invoice,) = remote[invoice_id]
        assert (invoice["id"], invoice["status"], parts) == (stripe_id, "paid", 1)
        assert invoice["total"] == int(total * 100) == invoice["amount_paid"]
        assert all(items[(invoice_id, str(p))] == 1 for p in range(1, lines + 1))
    assert sum(items.values()) == sum(r[5] for r in charged.values())
    assert customers == Counter({r[0]: 1 for r in charged.values()})
    assert paid == (SYNC_PRO, SYNC_PRO)  # one invoice.paid message each


# --------------------------------------------------------------------------- (b) two workers


RATE = 100  # simulated seconds per real second: an hour in 36 s
TICK_S = 0.2  # real seconds between the orchestrator's rounds (20 simulated seconds)
RUN = timedelta(minutes=64)
SECRET = "whsec_faults_workers"
HOBBY_MAX = timedelta(hours=1)
# Per second of one sandbox of 8 vCPU and 8 GiB at the default prices.
BIG_RATE = 8 * VCPU_SECOND + 8 * GIB_SECOND
KILL_REASON = {"max_duration": "timeout", "credit_exhausted": "limit",
               "spend_limit_reached": "limit", "team_blocked": "admin"}


@dataclass
class Demand:
    """What a team's users want: `count` sandboxes of a shape, each ending by itself after
    `life_s` (None: running until killed), asked for from `from_s` into the run. After a
    refusal the next ask waits `retry_s`; after a kill order, the demand stops unless
    `after_kill` says to ask again."""

    name: str
    team: str
    vcpu: int
    memory_mib: int
    count: int
    life_s: int | None = None
    from_s: int = 0
    retry_s: int = 300
    after_kill: bool = False
    next_ask: datetime | None = None
    stopped: bool = False


@dataclass
class Box:
    demand: Demand
    sandbox: str
    execution: str
    started: datetime
    ends: datetime | None


@dataclass
class Orchestrator:
    """Plays the orchestrator against the API over HTTP on the simulated clock: asks
    `POST /v1/admissions` before each start, posts lifecycle events and a `host_stats` sample
    per running sandbox each round, and obeys the kill-order feed."""

    http: httpx.Client
    clock: SimClock
    demands: list[Demand]
    t0: datetime
    running: dict[str, Box] = field(default_factory=dict)
    kills: dict[str, tuple[dict[str, Any], Box]] = field(default_factory=dict)
    feed_seen: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    started: int = 0
    posted: int = 0
    cursor: str | None = None
    serial: int = 0

    def event(self, kind: str, box: Box, moment: datetime, **data: Any) -> dict[str, Any]:
        self.serial += 1
        kind_type = "sandbox.host_stats" if kind == "host_stats" else f"sandbox.lifecycle.{kind}"
        return {"specversion": "1.0", "id": f"{kind}-{self.serial}",
                "source": "orchestrator/faults/sim", "type": kind_type, "subject": box.sandbox,
                "time": iso(moment),
                "data": {"team_id": box.demand.team, "execution_id": box.execution, **data}}

    def follow_feed(self, now: datetime, events: list[dict[str, Any]]) -> None:
        while True:
            params: dict[str, Any] = {"limit": 100}
            if self.cursor:
                params["after"] = self.cursor
            response = self.http.get("/v1/enforcement/actions", params=params)
            response.raise_for_status()
            page = response.json()
            self.cursor = page["next_cursor"] or self.cursor
            for order in page["data"]:
                self.feed_seen[order["id"]] += 1
                box = self.running.pop(order["sandbox_id"], None)
                if box is None or box.execution != order["execution_id"]:
                    continue
                self.kills[order["id"]] = (order, box)
                if not box.demand.after_kill:
                    box.demand.stopped = True
                box.demand.next_ask = now + timedelta(seconds=box.demand.retry_s)
                events.append(self.event("killed", box, now,
                                         reason=KILL_REASON[order["reason"]]))
            if len(page["data"]) < params["limit"]:
                return

    def start(self, demand: Demand, now: datetime, events: list[dict[str, Any]]) -> bool:
        self.serial += 1
        sandbox = f"sbx_{demand.name}_{self.serial}"
        response = self.http.post("/v1/admissions", json={
            "team_id": demand.team, "sandbox_id": sandbox, "vcpu": demand.vcpu,
            "memory_mib": demand.memory_mib})
        if response.status_code != 200:
            self.refusals[str(response.json().get("reason", response.status_code))] += 1
            demand.next_ask = now + timedelta(seconds=demand.retry_s)
            return False
        ends = None if demand.life_s is None else now + timedelta(seconds=demand.life_s)
        box = Box(demand, sandbox, f"exe_{demand.name}_{self.serial}", now, ends)
        self.running[sandbox] = box
        self.started += 1
        events.append(self.event("created", box, now, vcpu=demand.vcpu,
                                 memory_mib=demand.memory_mib, template_id="base"))
        return True

    def tick(self, now: datetime) -> None:
        events: list[dict[str, Any]] = []
        self.follow_feed(now, events)
        for box in list(self.running.values()):
            if box.ends is not None and now >= box.ends:
                del self.running[box.sandbox]
                box.demand.next_ask = now + timedelta(seconds=box.demand.retry_s)
                events.append(self.event("killed", box, box.ends, reason="request"))
            else:
                events.append(self.event("host_stats", box, now, cpu_pct=50.0,
                                         memory_used_mib=box.demand.memory_mib // 2))
        asked: set[str] = set()  # one start per team a round: Hobby may start one a second
        for demand in self.demands:
            mine = sum(1 for b in self.running.values() if b.demand is demand)
            if (demand.stopped or mine >= demand.count or demand.team in asked
                    or now < self.t0 + timedelta(seconds=demand.from_s)
                    or (demand.next_ask is not None and now < demand.next_ask)):
                continue
            asked.add(demand.team)
            self.start(demand, now, events)
        self.post(events)

    def finish(self, now: datetime) -> None:
        """The end of the run: every sandbox still running stops."""
        events = [self.event("killed", box, now, reason="request")
                  for box in self.running.values()]
        self.running.clear()
        self.post(events)

    def post(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        body = self.http.post("/v1/events", json=events).json()
        assert body.get("accepted") == len(events), body
        self.posted += len(events)


def sim_teams(finance: httpx.Client, month: datetime) -> None:
    """Five teams, on their plans from the month's first instant: two Hobby teams with long
    sandboxes, a Hobby team that has used all but $0.25 of its credit (its past usage, posted
    as events, is added by the caller), a Pro team with a $0.12 spend limit, and a Pro team."""
    since = iso(month)
    for team, plan, limit in (("team_hobby_a", "hobby", None), ("team_hobby_b", "hobby", None),
                              ("team_burner", "hobby", None), ("team_pro_a", "pro", "0.12"),
                              ("team_pro_b", "pro", None)):
        body: dict[str, Any] = {"name": team, "email": f"{team}@example.com", "plan": plan,
                                "effective_at": since}
        if limit is not None:
            body["spend_limit"] = limit
        finance.put(f"/v1/teams/{team}", json=body).raise_for_status()


def sim_demands() -> list[Demand]:
    return [
        # Two Hobby teams, two sandboxes each that run past the plan's hour: max_duration.
        *(Demand(f"{t}_long", f"team_{t}", 2, 2048, count=2) for t in ("hobby_a", "hobby_b")),
        # ...and short ones coming and going, ended by their users.
        *(Demand(f"{t}_short", f"team_{t}", 1, 512, count=1, life_s=240, retry_s=120)
          for t in ("hobby_a", "hobby_b")),
        # $0.25 of credit at $0.000296/s: about 14 minutes, then credit_exhausted; asking
        # again every 5 minutes is refused.
        Demand("burner", "team_burner", 8, 8192, count=2, after_kill=True),
        # $0.12 limit at $0.000148/s: 80 % after ~11 minutes, spend_limit_reached after ~14;
        # small sandboxes asked for from 20 minutes on are refused until the next month.
        Demand("pro_a_big", "team_pro_a", 4, 4096, count=2),
        Demand("pro_a_small", "team_pro_a", 1, 512, count=1, life_s=300, from_s=20 * 60,
               retry_s=120),
        Demand("pro_b", "team_pro_b", 2, 2048, count=1),
    ]


def feed(url: str, key: str) -> list[dict[str, Any]]:
    """The whole kill-order feed, page by page."""
    orders: list[dict[str, Any]] = []
    cursor = None
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as http:
        while True:
            params: dict[str, Any] = {"limit": 3}  # small pages: the paging is tested too
            if cursor:
                params["after"] = cursor
            page = http.get("/v1/enforcement/actions", params=params).json()
            orders += page["data"]
            if not page["data"]:
                return orders
            cursor = page["next_cursor"]


def test_two_workers_for_a_simulated_hour_do_everything_once(
    fault_database: str, services: list[Service], processes: list[Stoppable], tmp_path: Path
) -> None:
    # The month boundary 50 simulated minutes (30 s) after launch; the processes start
    # meanwhile, and the orchestrator starts when they are ready.
    boundary = month_start(datetime.now(UTC))
    clock = SimClock.starting(boundary - timedelta(minutes=50), RATE)
    month = month_start(boundary - timedelta(days=1))
    period = format_period(month)
    receiver = WebhookReceiver(SECRET, lambda: clock.now().timestamp(),
                               refuse_first=lambda n: n % 3 == 1, work_s=0.15).start()
    processes.append(receiver)
    double = StripeDoubleProcess(tmp_path / "stripe-double.log", seed=5)
    processes.append(double)
    simulation = {
        **sim_clock_env(clock), "METERING_STALE_AFTER_S": "600",
        "METERING_CLOSE_GRACE_S": "300", "METERING_LOG_LEVEL": "ERROR"}
    api = Service(fault_database, scheduler=False, env=simulation)
    services.append(api)
    jobs = {**simulation, **double.env(), "METERING_SWEEP_INTERVAL_S": str(TICK_S),
            "METERING_FOLD_INTERVAL_S": "1", "METERING_CLOSE_INTERVAL_S": "1",
            "METERING_STRIPE_SYNC_INTERVAL_S": "1",
            "METERING_ORCHESTRATOR_WEBHOOK_URL": receiver.url,
            "METERING_ORCHESTRATOR_WEBHOOK_SECRET": SECRET}
    workers = [Worker(fault_database, tmp_path / f"worker-{n}.log", jobs) for n in (1, 2)]
    processes.extend(workers)
    launched = time.monotonic()
    # The API migrates the database first; then both workers and the double side by side.
    start_all(api.start, double.start)
    start_all(*(w.start for w in workers))
    ingest, finance = api.create_key("ingest"), api.create_key("finance")
    with httpx.Client(base_url=api.url, timeout=30,
                      headers={"Authorization": f"Bearer {finance}"}) as http:
        sim_teams(http, month)
    # The burner's past: one long sandbox last month that used $99.75 of its $100.
    past_s = int((Decimal(100) - Decimal("0.25")) / BIG_RATE) + 1
    past_end = boundary - timedelta(hours=3)
    post_events(api.url, ingest, PastExecution(
        "team_burner", "exe_burner_past", past_end - timedelta(seconds=past_s), past_s, 8,
        8192).events())
    t0 = clock.now()
    ready_s = time.monotonic() - launched
    assert boundary - t0 >= timedelta(minutes=18), f"the processes took {ready_s:.1f} s to start"

    with httpx.Client(base_url=api.url, timeout=30,
                      headers={"Authorization": f"Bearer {ingest}"}) as http:
        orchestrator = Orchestrator(http, clock, sim_demands(), t0)
        running_since = time.monotonic()
        while (now := clock.now()) < t0 + RUN:
            round_started = time.monotonic()
            orchestrator.tick(now)
            time.sleep(max(0.0, TICK_S - (time.monotonic() - round_started)))
        orchestrator.finish(clock.now())
        run_s = time.monotonic() - running_since

        # Until every invoice is settled and every message acknowledged.
        def settled() -> bool:
            row = query(fault_database, """
                SELECT (SELECT count(*) FROM invoices),
                       (SELECT count(*) FROM invoices WHERE status NOT IN ('synced', 'paid')),
                       (SELECT count(*) FROM outbox_messages WHERE delivered_at IS NULL)""")[0]
            return bool(row[0] > 0 and row[1] == 0 and row[2] == 0)

        drain_s = wait_for(settled, 30, "invoices synced and every message delivered")
        tail: list[dict[str, Any]] = []
        orchestrator.follow_feed(clock.now(), tail)
    end = clock.now()
    fed = feed(api.url, ingest)
    for worker in workers:
        worker.stop()
    api.stop()

    # ---- what happened
    orders = {r[0]: r[1:] for r in query(fault_database, """
        SELECT id, execution_id, sandbox_id, team_id, reason, issued_at FROM kill_orders""")}
    messages = {r[0]: r[1:] for r in query(fault_database, """
        SELECT id, type, attempts, delivered_at IS NOT NULL, abandoned_at IS NOT NULL,
               payload, delivered_at - created_at FROM outbox_messages""")}
    invoices = {r[0]: r[1:] for r in query(fault_database, """
        SELECT id, team_id, period, total, status, stripe_status, sync_attempts, number,
               finalized_at FROM invoices""")}
    runs = query(fault_database, """
        SELECT period, status, invoices_made FROM invoice_close_runs ORDER BY started_at""")
    deliveries = receiver.snapshot()
    state, log = double.state(), double.requests()
    charged = {i for i, r in invoices.items() if r[2] > 0}
    posts = Counter(d.message_id for d in deliveries)
    acks = Counter(d.message_id for d in deliveries if d.status == 200)
    refused = {d.message_id for d in deliveries if d.status != 200}
    expected_reasons = {"hobby_a_long": "max_duration", "hobby_b_long": "max_duration",
                        "burner": "credit_exhausted", "pro_a_big": "spend_limit_reached"}
    kill_messages = [m[4]["data"] for m in messages.values() if m[0] == "kill_order"]
    overdue = sorted((orders[o["id"]][4] - (box.started + HOBBY_MAX)).total_seconds()
                     for o, box in orchestrator.kills.values() if o["reason"] == "max_duration")
    delivered_after = sorted(m[5].total_seconds() for m in messages.values())
    closed_at = min(r[7] for r in invoices.values())
    print(f"\n[faults] two workers for {(end - t0) / timedelta(minutes=1):.0f} simulated minutes "
          f"(rate {RATE}: {run_s:.1f} s, after {ready_s:.1f} s of start-up), the month ending "
          f"{(boundary - t0) / timedelta(minutes=1):.0f} minutes in: {orchestrator.started} "
          f"sandboxes started, {orchestrator.posted:,} events, refusals "
          f"{dict(orchestrator.refusals)}; kill orders "
          f"{dict(Counter(o[3] for o in orders.values()))}: {len(orders)} in the database, "
          f"{len(fed)} in the feed, {len(kill_messages)} kill_order messages, "
          f"{len(orchestrator.kills)} obeyed; max_duration issued "
          f"{overdue[0]:.0f}-{overdue[-1]:.0f} simulated s after the hour; {len(messages)} "
          f"messages {dict(Counter(m[0] for m in messages.values()))}: {len(deliveries)} "
          f"deliveries ({len(refused)} refused once), acknowledgements per message "
          f"{dict(Counter(acks[i] for i in messages))}, delivered "
          f"{delivered_after[len(delivered_after) // 2]:.0f}/{delivered_after[-1]:.0f} "
          f"simulated s (p50/max) after queued; {period} closed "
          f"{(closed_at - boundary) / timedelta(minutes=1):.1f} minutes after its end; close "
          f"runs (period, invoices made) {[(r[0], r[2]) for r in runs]}: {len(invoices)} "
          f"invoices, sync attempts {dict(Counter(r[5] for r in invoices.values()))}; Stripe: "
          f"{len(state['invoices'])} invoices for {len(charged)} charged, "
          f"{sum(log['counts'].values())} requests, idempotency keys sent "
          f"{dict(Counter(log['idempotency_keys'].values()))} time(s); drained in "
          f"{drain_s:.1f} s; job failures per worker {[w.job_failures() for w in workers]}",
          flush=True)

    # Kill orders: one per execution that had to stop, for the right reason, never early;
    # the same set in the database, the feed (read whole, and tailed by the orchestrator)
    # and the webhook.
    assert len({o[0] for o in orders.values()}) == len(orders)
    assert {o[0]: o[3] for o in orders.values()} == {
        box.execution: expected_reasons[box.demand.name]
        for _, box in orchestrator.kills.values()}
    assert Counter(o[3] for o in orders.values()) == {
        "max_duration": 4, "credit_exhausted": 2, "spend_limit_reached": 2}
    assert sorted(o["id"] for o in fed) == sorted(orders) == sorted(orchestrator.kills)
    assert orchestrator.feed_seen == Counter(dict.fromkeys(orders, 1)) and not tail
    assert overdue[0] >= 0 and overdue[-1] <= 300, overdue
    assert Counter(k["id"] for k in kill_messages) == Counter(dict.fromkeys(orders, 1))
    assert {k["id"]: k for k in kill_messages} == {o["id"]: o for o in fed}

    # Webhook messages: each delivered, acknowledged exactly once, posted once more only
    # when the receiver refused it, and the outbox counted exactly the attempts made.
    assert Counter(m[0] for m in messages.values()) == {
        "kill_order": 8, "credit.threshold": 3, "spend_limit.threshold": 2,
        "invoice.finalized": 5, "invoice.paid": len(charged)}
    assert all(m[2] and not m[3] for m in messages.values())
    assert not receiver.rejected
    assert acks == Counter(dict.fromkeys(messages, 1))
    assert posts == Counter({i: 2 if i in refused else 1 for i in messages})
    assert {i: m[1] for i, m in messages.items()} == dict(posts)
    assert refused  # the retry path was exercised

    # Invoices: the month closed once per team, numbered without gaps, each synced once.
    assert sorted(r[0] for r in invoices.values()) == [
        "team_burner", "team_hobby_a", "team_hobby_b", "team_pro_a", "team_pro_b"]
    assert {r[1] for r in invoices.values()} == {period}
    assert sorted(r[6] for r in invoices.values()) == [
        f"INV-{boundary.year}-{n:06d}" for n in range(1, 6)]  # numbered in the year closed
    # (Both workers may run a close at once: they take turns chunk by chunk under the
    # invoicing lock, and the later one finds the invoices made.)
    assert {r[1] for r in runs} == {"completed"} and sum(r[2] for r in runs) == 5
    assert all(r[3] == ("paid" if i in charged else "synced") and r[5] == 1
               for i, r in invoices.items()), invoices
    assert {"team_pro_a", "team_pro_b"} <= {invoices[i][0] for i in charged}
    stripe_of = Counter(i["metadata"]["invoice_id"] for i in state["invoices"])
    assert stripe_of == Counter(dict.fromkeys(charged, 1))
    assert all(i["status"] == "paid" and i["total"] == int(invoices[i["metadata"][
        "invoice_id"]][2] * 100) for i in state["invoices"])
    # No Stripe effect was asked for twice: every idempotency key was sent once.
    assert log["idempotency_keys"] and set(log["idempotency_keys"].values()) == {1}
