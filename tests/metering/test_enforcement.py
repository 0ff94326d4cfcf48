"""Kill orders and threshold notifications (contract section 3), against real PostgreSQL.

Executions are made by posting real events; the team's money comes from a small fake
`Billing` installed per test, so these tests do not depend on billing's implementation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.app import create_app
from metering import plugins
from metering.config import Settings
from metering.core import clock
from metering.core.clock import rfc3339, utc_now
from metering.core.limits import DEFAULT_PLAN_LIMITS
from metering.core.money import UnitPrices
from metering.db import transaction
from metering.enforcement import jobs as jobs_enforcement
from metering.enforcement import service
from metering.enforcement.watch import (
    MoneyPosition,
    TeamTerms,
    Watchlist,
    allocation,
    next_look,
    seconds_to_money_event,
)
from metering.ingest import jobs
from metering.plugins import DefaultBilling, Standing, TeamLimits
from metering.teams.service import block_team
from tests.conftest import Keys, event

STALE = 60


# --------------------------------------------------------------------------- fixtures


@dataclass
class FakeBilling(DefaultBilling):
    """Default prices and limits, with per-team standings a test sets."""

    standings: dict[str, Standing] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    looks: list[str] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)

    def admission(self, session: Session, team_id: str, now: datetime,
                  prefetched: Any = None) -> tuple[TeamLimits, Standing]:
        self.looks.append(team_id)
        if team_id in self.broken:
            raise ValueError(f"no plan data for {team_id}")
        return super().admission(session, team_id, now, prefetched)

    def limits(self, session: Session, team_id: str, at: datetime) -> TeamLimits:
        plan = self.plans.get(team_id, "hobby")
        return TeamLimits(plan, DEFAULT_PLAN_LIMITS[plan], credit_enforced=plan == "hobby")

    def standing(self, session: Session, team_id: str, now: datetime) -> Standing:
        return self.standings.get(team_id) or super().standing(session, team_id, now)

    def set(self, team_id: str, *, granted: str = "0", used: str = "0",
            enforced: bool = True, month_spend: str = "0", spend_limit: str | None = None,
            blocked: bool = False) -> None:
        g, u = Decimal(granted), Decimal(used)
        self.standings[team_id] = Standing(
            team_id, blocked, None, g, u, (g - u) if enforced else None, Decimal(month_spend),
            Decimal(spend_limit) if spend_limit is not None else None, Decimal(0))


@pytest.fixture
def billing() -> Iterator[FakeBilling]:
    before = plugins.billing()
    fake = FakeBilling()
    plugins.install(fake)
    yield fake
    plugins.install(before)


@pytest.fixture(autouse=True)
def fresh_watch() -> Iterator[None]:
    service.WATCH.clear()
    yield
    service.WATCH.clear()


@pytest.fixture(scope="module")
def feed_app(database_url: str, engine: Engine) -> FastAPI:
    app = create_app(Settings(database_url=None, run_scheduler=False),
                     database_url=database_url, migrate_on_start=False)
    return app


@pytest.fixture
def feed(feed_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(feed_app) as test_client:
        yield test_client


# --------------------------------------------------------------------------- helpers


def post(client: TestClient, keys: Keys, batch: list[dict[str, Any]]) -> None:
    response = client.post("/v1/events", json=batch, headers=Keys.auth(keys.ingest))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(batch), response.text


def run(client: TestClient, keys: Keys, team: str, name: str, *, age_s: float,
        ended: bool = False, vcpu: int = 2, memory_mib: int = 1024) -> None:
    """An execution started `age_s` ago; alive now (a sample a second ago) or killed."""
    now = utc_now()
    start = now - timedelta(seconds=age_s)
    batch = [event("created", team=team, execution=f"exe_{name}", sandbox=f"sbx_{name}",
                   time=rfc3339(start), vcpu=vcpu, memory_mib=memory_mib)]
    last = now - timedelta(seconds=1)
    batch.append(event("killed" if ended else "host_stats", team=team, execution=f"exe_{name}",
                       sandbox=f"sbx_{name}", time=rfc3339(last)))
    post(client, keys, batch)


def alive(client: TestClient, keys: Keys, team: str, *names: str) -> None:
    """A sample from each named sandbox a second ago (by the service's clock)."""
    moment = rfc3339(utc_now() - timedelta(seconds=1))
    post(client, keys, [event("host_stats", team=team, execution=f"exe_{n}", sandbox=f"sbx_{n}",
                              time=moment) for n in names])


def sweep(sessions: sessionmaker[Session], watch: Watchlist | None = None) -> service.SweepResult:
    """A sweep that looks at every team's money (a fresh watchlist), unless given one."""
    jobs.refresh_liveness(sessions)  # samples reach executions.last_event_at
    return jobs_enforcement.sweep_enforcement(sessions, STALE, watch or Watchlist())


def orders(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with transaction(sessions) as session:
        return [(r[0], r[1], r[2]) for r in session.execute(text(
            "SELECT execution_id, reason, team_id FROM kill_orders ORDER BY seq"))]


def messages(sessions: sessionmaker[Session], type_: str) -> list[dict[str, Any]]:
    with transaction(sessions) as session:
        return [r[0] for r in session.execute(text(
            "SELECT payload FROM outbox_messages WHERE type = :t ORDER BY seq"), {"t": type_})]


# --------------------------------------------------------------------------- max duration


def test_an_execution_past_its_max_duration_gets_exactly_one_kill_order(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    run(client, api_keys, "team_1", "old", age_s=3601)
    run(client, api_keys, "team_1", "young", age_s=3500)
    run(client, api_keys, "team_1", "gone", age_s=4000, ended=True)
    billing.plans["team_pro"] = "pro"  # 24 h: an hour is fine there
    run(client, api_keys, "team_pro", "pro", age_s=3700)

    first = sweep(sessions)
    second = sweep(sessions)

    assert [o.execution_id for o in first.kill_orders] == ["exe_old"]
    assert second.kill_orders == []
    assert orders(sessions) == [("exe_old", "max_duration", "team_1")]
    (message,) = messages(sessions, "kill_order")
    (order,) = first.kill_orders
    assert message["type"] == "kill_order" and message["id"].startswith("msg_")
    assert message["data"] == {
        "id": order.id, "team_id": "team_1", "sandbox_id": "sbx_old", "execution_id": "exe_old",
        "action": "kill", "reason": "max_duration", "issued_at": rfc3339(order.issued_at)}
    assert order.id.startswith("ko_")
    # Issued at the sweep: the hour passed about a second ago.
    assert utc_now() - order.issued_at < timedelta(seconds=5)


def test_concurrent_sweeps_issue_one_kill_order(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    run(client, api_keys, "team_1", "old", age_s=3700)
    jobs.refresh_liveness(sessions)
    barrier = threading.Barrier(2)
    results: list[service.SweepResult] = []

    def sweeper() -> None:
        barrier.wait()
        results.append(jobs_enforcement.sweep_enforcement(sessions, STALE))

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(r.kill_orders) for r in results) == 1
    assert orders(sessions) == [("exe_old", "max_duration", "team_1")]
    assert len(messages(sessions, "kill_order")) == 1


def test_issuing_the_same_execution_twice_at_once_keeps_the_first_reason(
    sessions: sessionmaker[Session],
) -> None:
    barrier = threading.Barrier(2)
    issued: dict[str, int] = {}

    def issue(reason: Any) -> None:
        with transaction(sessions) as session:
            barrier.wait()
            decision = service.KillDecision("team_1", "sbx_1", "exe_1", reason)
            issued[reason] = len(service.issue_kill_orders(session, [decision], utc_now()))

    threads = [threading.Thread(target=issue, args=(r,))
               for r in ("max_duration", "team_blocked")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(issued.values()) == [0, 1]
    winner = next(r for r, n in issued.items() if n == 1)
    assert orders(sessions) == [("exe_1", winner, "team_1")]
    assert len(messages(sessions, "kill_order")) == 1


# --------------------------------------------------------------------------- money and blocks


def test_exhausted_credit_kills_every_running_sandbox_of_the_team_and_no_ended_one(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    for name in ("a", "b", "c"):
        run(client, api_keys, "team_broke", name, age_s=120)
    run(client, api_keys, "team_broke", "ended", age_s=300, ended=True)
    run(client, api_keys, "team_fine", "fine", age_s=120)
    run(client, api_keys, "team_pro", "pro", age_s=120)
    billing.set("team_broke", granted="100", used="100.000001")
    billing.set("team_fine", granted="100", used="10")
    billing.set("team_pro", granted="100", used="150", enforced=False)  # credit doesn't stop pro

    assert sweep(sessions).kill_orders
    assert sorted(orders(sessions)) == [
        ("exe_a", "credit_exhausted", "team_broke"), ("exe_b", "credit_exhausted", "team_broke"),
        ("exe_c", "credit_exhausted", "team_broke")]
    # Exactly zero left is exhausted too (the contract's "reaches 0").
    run(client, api_keys, "team_fine", "fine2", age_s=5)
    billing.set("team_fine", granted="100", used="100")
    sweep(sessions)
    assert {o[0] for o in orders(sessions) if o[2] == "team_fine"} == {"exe_fine", "exe_fine2"}
    assert not [o for o in orders(sessions) if o[2] == "team_pro"]


def test_reaching_the_spend_limit_kills_all_running_and_warns_at_80_and_100_percent(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    run(client, api_keys, "team_s", "one", age_s=60)
    run(client, api_keys, "team_s", "two", age_s=30)
    run(client, api_keys, "team_s", "done", age_s=90, ended=True)
    billing.set("team_s", enforced=False, month_spend="40", spend_limit="50")
    sweep(sessions)
    assert orders(sessions) == []
    assert [m["data"]["threshold_pct"] for m in messages(sessions, "spend_limit.threshold")] == [80]

    billing.set("team_s", enforced=False, month_spend="50", spend_limit="50")
    sweep(sessions)
    sweep(sessions)
    assert sorted(orders(sessions)) == [("exe_one", "spend_limit_reached", "team_s"),
                                        ("exe_two", "spend_limit_reached", "team_s")]
    notes = messages(sessions, "spend_limit.threshold")
    assert [m["data"]["threshold_pct"] for m in notes] == [80, 100]
    assert notes[1]["data"] == {
        "team_id": "team_s", "threshold_pct": 100, "period": utc_now().strftime("%Y-%m"),
        "spend_limit": "50", "month_spend": "50", "currency": "usd",
        "at": notes[1]["data"]["at"]}


def test_a_blocked_team_loses_every_running_sandbox_and_blocked_comes_first(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    run(client, api_keys, "team_b", "one", age_s=4000)  # also past its hour
    run(client, api_keys, "team_b", "two", age_s=10)
    run(client, api_keys, "team_b", "done", age_s=90, ended=True)
    billing.set("team_b", granted="10", used="20")  # and out of credit
    with transaction(sessions) as session:
        block_team(session, "team_b", "unpaid_invoice", utc_now())
    sweep(sessions)
    assert sorted(orders(sessions)) == [("exe_one", "team_blocked", "team_b"),
                                        ("exe_two", "team_blocked", "team_b")]


def test_credit_thresholds_fire_once_each_and_again_for_a_new_grant_total(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    run(client, api_keys, "team_t", "one", age_s=30)

    def pcts() -> list[tuple[str, int]]:
        return [(m["data"]["credit_granted"], m["data"]["threshold_pct"])
                for m in messages(sessions, "credit.threshold")]

    for used, expected in [
        ("40", []),
        ("55", [("100", 50)]),
        ("60", [("100", 50)]),
        ("85", [("100", 50), ("100", 80)]),
        ("85", [("100", 50), ("100", 80)]),
    ]:
        billing.set("team_t", granted="100", used=used)
        sweep(sessions)
        assert pcts() == expected, used
    assert orders(sessions) == []
    # A top-up: the count starts again against the new total.
    billing.set("team_t", granted="200", used="110")
    sweep(sessions)
    assert pcts()[2:] == [("200", 50)]
    billing.set("team_t", granted="200", used="200")
    sweep(sessions)
    sweep(sessions)
    assert pcts()[2:] == [("200", 50), ("200", 80), ("200", 100)]
    assert orders(sessions) == [("exe_one", "credit_exhausted", "team_t")]
    last = messages(sessions, "credit.threshold")[-1]["data"]
    assert last["credit_remaining"] == "0" and last["credit_used"] == "200"


def test_one_teams_broken_billing_data_does_not_keep_others_running(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run(client, api_keys, "team_bad", "bad", age_s=4000)
    run(client, api_keys, "team_good", "good", age_s=4000)
    billing.broken.add("team_bad")
    assert [o.execution_id for o in sweep(sessions).kill_orders] == ["exe_good"]
    assert "judging a team failed" in caplog.text


def test_a_sweep_with_nothing_running_does_nothing(
    sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    result = sweep(sessions)
    assert result.swept and result.teams == 0 and result.kill_orders == []


# --------------------------------------------------------------------------- the feed


def test_the_feed_pages_oldest_first_with_the_cursor(
    feed: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    t0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    issued = []
    for i in range(5):
        with transaction(sessions) as session:
            issued += service.issue_kill_orders(session, [service.KillDecision(
                "team_1", f"sbx_{i}", f"exe_{i}", "max_duration")], t0 + timedelta(seconds=i))
    seen: list[dict[str, Any]] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after:
            params["after"] = after
        response = feed.get("/v1/enforcement/actions", params=params,
                            headers=Keys.auth(api_keys.ingest))
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        if not body["data"]:
            assert body["next_cursor"] is None
            break
        seen += body["data"]
        after = body["next_cursor"]
    assert pages == 4  # 2 + 2 + 1, then the empty tail
    assert [o["execution_id"] for o in seen] == [f"exe_{i}" for i in range(5)]
    assert seen[0] == {"id": issued[0].id, "team_id": "team_1", "sandbox_id": "sbx_0",
                       "execution_id": "exe_0", "action": "kill", "reason": "max_duration",
                       "issued_at": "2026-11-03T10:00:00.000Z"}
    # Tailing: an order issued later shows up after the last cursor.
    with transaction(sessions) as session:
        service.issue_kill_orders(session, [service.KillDecision(
            "team_2", "sbx_9", "exe_9", "team_blocked")], t0 + timedelta(minutes=1))
    body = feed.get("/v1/enforcement/actions", params={"after": after},
                    headers=Keys.auth(api_keys.admin)).json()
    assert [o["execution_id"] for o in body["data"]] == ["exe_9"]


def test_the_feed_checks_keys_limits_and_cursors(feed: TestClient, api_keys: Keys) -> None:
    url = "/v1/enforcement/actions"
    assert feed.get(url).status_code == 401
    assert feed.get(url, headers=Keys.auth(api_keys.finance)).status_code == 403
    ok = feed.get(url, headers=Keys.auth(api_keys.ingest))
    assert ok.status_code == 200 and ok.json() == {"data": [], "next_cursor": None}
    for limit in (0, 1001):
        assert feed.get(url, params={"limit": limit},
                        headers=Keys.auth(api_keys.ingest)).status_code == 422
    bad = feed.get(url, params={"after": "nonsense"}, headers=Keys.auth(api_keys.ingest))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    schema = feed.get("/openapi.json").json()
    assert "KillOrderPage" in schema["components"]["schemas"]


def test_with_billing_installed_a_hobby_team_out_of_its_credit_is_stopped(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    # The real plans and credit ledger (wired by the test app): a team first seen in events
    # starts on Hobby with its $100 grant; nine days of 8 vCPU / 8 GiB cost about $115.
    now = utc_now()
    post(client, api_keys, [
        event("created", team="team_h", execution="exe_big", sandbox="sbx_big",
              time=rfc3339(now - timedelta(days=9)), vcpu=8, memory_mib=8192),
        event("killed", team="team_h", execution="exe_big", sandbox="sbx_big",
              time=rfc3339(now - timedelta(minutes=1)), reason="request"),
    ])
    run(client, api_keys, "team_h", "small", age_s=20)
    sweep(sessions)
    assert orders(sessions) == [("exe_small", "credit_exhausted", "team_h")]
    assert [m["data"]["threshold_pct"] for m in messages(sessions, "credit.threshold")] == [
        50, 80, 100]


# --------------------------------------------------------------------------- cheap sweeps


def position(granted: str = "0", used: str = "0", enforced: bool = True, spend: str = "0",
             limit: str | None = None) -> MoneyPosition:
    g, u = Decimal(granted), Decimal(used)
    return MoneyPosition(g, u, g - u if enforced else None, Decimal(spend),
                         Decimal(limit) if limit is not None else None)


def test_the_time_to_the_nearest_money_event_at_the_running_cost_rate() -> None:
    rate = Decimal("0.5")  # $ per second
    thresholds = (50, 80, 100)
    # 40 of 100 used: 50 % is $10 away -> 20 s.
    assert seconds_to_money_event(position("100", "40"), rate, thresholds, (80, 100)) == 20
    # 90 used: only the end is left, $10 -> 20 s.
    assert seconds_to_money_event(position("100", "90"), rate, thresholds, (80, 100)) == 20
    assert seconds_to_money_event(position("100", "100"), rate, thresholds, (80, 100)) == 0
    assert seconds_to_money_event(position("100", "101"), rate, thresholds, (80, 100)) == 0
    # Spend: 80 % of a $50 limit is $40; at $30 spent it is $10 away.
    spend = position(enforced=False, spend="30", limit="50")
    assert seconds_to_money_event(spend, rate, thresholds, (80, 100)) == 20
    assert seconds_to_money_event(position(enforced=False, spend="50", limit="50"), rate,
                                  thresholds, (80, 100)) == 0
    # Nothing to reach, or nothing running: never.
    assert seconds_to_money_event(position(enforced=False), rate, thresholds, (80, 100)) is None
    assert seconds_to_money_event(position("100", "40"), Decimal(0), thresholds, (80,)) is None
    now = utc_now()
    top, bottom = (lambda: 1.0), (lambda: 0.0)
    assert next_look(now, Decimal(30), 10, top) == now + timedelta(seconds=10)
    assert next_look(now, Decimal(30), 10, bottom) == now + timedelta(seconds=5)  # jittered
    assert next_look(now, Decimal(6), 10, top) == now + timedelta(seconds=3)
    assert next_look(now, Decimal(0), 10, top) == now
    assert next_look(now, None, 10, top) == now + timedelta(seconds=10)


def test_the_watchlist_plans_looks_and_replans_when_what_runs_changes() -> None:
    watch = Watchlist(max_recheck_s=10)
    now = utc_now()
    prices = UnitPrices(Decimal("0.5"), Decimal(0))  # $0.5 per vCPU-second
    terms = TeamTerms(DEFAULT_PLAN_LIMITS["hobby"], prices, now)
    one = allocation([("exe_1", 1, 1024)])
    assert watch.look_priority("t", now, one, None) == (1, now)
    assert watch.limits("t") is None
    # $4 left at $0.5/s: zero in 8 s, look again in 4 s.
    watch.remember_look("t", now, terms, position("100", "96"), one)
    assert watch.limits("t") == terms.limits
    assert watch.look_priority("t", now + timedelta(seconds=3), one, None) is None
    assert watch.look_priority("t", now + timedelta(seconds=4), one, None) == (
        0, now + timedelta(seconds=8))
    # A second vCPU starts 2 s after the look: at most $2 spent since (at the higher rate,
    # to be safe), $2 left at $1/s: zero in 2 s, look again in 1 s.
    two = allocation([("exe_1", 1, 1024), ("exe_2", 1, 0)])
    at = now + timedelta(seconds=2)
    assert watch.look_priority("t", at, two, None) is None
    assert watch.look_priority("t", at + timedelta(seconds=1), two, None) == (
        0, at + timedelta(seconds=2))
    # Nothing to reach: a periodic look, after the others.
    watch.remember_look("t", now, terms, position(enforced=False), one)
    later = now + timedelta(seconds=10)
    priority = watch.look_priority("t", later, one, None)
    assert priority is not None and priority[0] == 2
    watch.forget_except([])
    assert watch.look_priority("t", now, one, now - timedelta(hours=1)) == (
        1, now - timedelta(hours=1))


def test_a_sweep_looks_at_a_teams_money_only_when_it_may_matter(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    # (Generous margins throughout: the clock is shifted, but real seconds pass too.)
    watch = Watchlist(max_recheck_s=60)
    run(client, api_keys, "team_w", "one", age_s=30)
    # One sandbox of 2 vCPU + 1 GiB costs $0.0000325 a second; $0.00065 is 20 s of it.
    billing.set("team_w", granted="100", used="99.99935")
    sweep(sessions, watch)
    assert billing.looks == ["team_w"]
    sweep(sessions, watch)  # 20 s to go: look again after 10 s, not now
    assert billing.looks == ["team_w"]
    clock.set_offset(timedelta(seconds=10.5))
    sweep(sessions, watch)
    assert billing.looks == ["team_w"] * 2
    # Far from anything: the longest wait is max_recheck_s (jittered to 30..60 s)...
    billing.set("team_w", granted="100", used="1")
    clock.set_offset(timedelta(seconds=25))
    alive(client, api_keys, "team_w", "one")
    sweep(sessions, watch)
    sweep(sessions, watch)
    assert billing.looks == ["team_w"] * 3
    # ...and a new sandbox far from any event changes nothing.
    run(client, api_keys, "team_w", "two", age_s=1)
    sweep(sessions, watch)
    assert billing.looks == ["team_w"] * 3
    clock.set_offset(timedelta(seconds=86))
    alive(client, api_keys, "team_w", "one", "two")
    sweep(sessions, watch)
    assert billing.looks == ["team_w"] * 4
    # Near the end, a big sandbox starting brings the next look forward: $0.0013 left lasts
    # 20 s at 2 x $0.0000325/s (look again in 10 s), but 6.1 s once 8 vCPU + 8 GiB
    # ($0.000148/s) join (look again in about 3 s).
    billing.set("team_w", granted="100", used="99.9987")
    clock.set_offset(timedelta(seconds=150))
    alive(client, api_keys, "team_w", "one", "two")
    sweep(sessions, watch)
    assert billing.looks == ["team_w"] * 5
    run(client, api_keys, "team_w", "big", age_s=1, vcpu=8, memory_mib=8192)
    sweep(sessions, watch)
    clock.set_offset(timedelta(seconds=156))
    alive(client, api_keys, "team_w", "one", "two", "big")
    sweep(sessions, watch)
    assert billing.looks == ["team_w"] * 6
    # Credit gone: looked at on every sweep until the kill orders are out.
    billing.set("team_w", granted="100", used="100")
    clock.set_offset(timedelta(seconds=165))
    alive(client, api_keys, "team_w", "one", "two", "big")
    assert len(sweep(sessions, watch).kill_orders) == 3
    assert sweep(sessions, watch).teams == 0


def test_past_the_look_budget_teams_wait_their_turn_oldest_first(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    watch = Watchlist(look_budget_s=0, limits_budget_s=0)  # one billing call per sweep
    for team, age in (("team_x", 3700), ("team_y", 3650), ("team_z", 3800)):
        run(client, api_keys, team, f"{team}_old", age_s=age)
        run(client, api_keys, team, f"{team}_young", age_s=5)
        billing.set(team, granted="100", used="1")
    results = [sweep(sessions, watch) for _ in range(3)]
    assert [r.looks for r in results] == [1, 1, 1]
    # Never looked at, a team's limits are unknown: the oldest execution goes first.
    assert billing.looks == ["team_z", "team_x", "team_y"]
    assert [[o.execution_id for o in r.kill_orders] for r in results] == [
        ["exe_team_z_old"], ["exe_team_x_old"], ["exe_team_y_old"]]
    # Once looked at, durations are judged on every sweep, without asking billing again.
    run(client, api_keys, "team_x", "late", age_s=3601)
    fourth = sweep(sessions, watch)
    assert fourth.looks == 0
    assert [(o.execution_id, o.reason) for o in fourth.kill_orders] == [
        ("exe_late", "max_duration")]


def test_past_the_look_budget_limits_alone_are_read_so_durations_are_judged_at_once(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], billing: FakeBilling,
) -> None:
    watch = Watchlist(look_budget_s=0, limits_budget_s=5)
    for team in ("team_x", "team_y", "team_z"):
        run(client, api_keys, team, f"{team}_old", age_s=3700)
        billing.set(team, granted="100", used="1")
    first = sweep(sessions, watch)
    assert first.looks == 1 and len(first.kill_orders) == 3
