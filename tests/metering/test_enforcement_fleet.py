"""Enforcement at fleet size, with the real billing: 1,000 teams, every kill order due is
issued in the first sweep of a worker that has just started (nothing learnt about any team),
reading the teams' money in bulk: a few dozen statements, not several per team.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from metering.core.clock import rfc3339, utc_now
from metering.db import transaction
from metering.enforcement import jobs as jobs_enforcement
from metering.enforcement import service
from metering.enforcement.watch import Watchlist
from metering.ingest import jobs
from metering.teams.service import block_team
from tests.conftest import Keys, event
from tests.metering.test_enforcement import STALE, orders, post

TEAMS = 1000


def cold_watch() -> Watchlist:
    """A worker just started: nothing learnt about any team. Its look budget is generous so
    that a loaded test machine cannot make this test about timing (`bench.sweep` measures
    the sweep's duration with the production budgets)."""
    return Watchlist(credit_thresholds=service.CREDIT_THRESHOLDS,
                     spend_thresholds=service.SPEND_LIMIT_THRESHOLDS,
                     look_budget_s=10, limits_budget_s=0)


@contextmanager
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement the driver sends meanwhile (pipelined ones included)."""
    sent: list[str] = []
    original = psycopg.Cursor.execute

    def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query))
        return original(cursor, query, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(psycopg.Cursor, "execute", execute)
        yield sent


def test_at_1000_teams_blocked_out_of_credit_and_overdue_sandboxes_are_stopped_in_one_sweep(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = utc_now()
    batch: list[dict[str, Any]] = []
    expected: set[tuple[str, str, str]] = set()
    blocked: list[str] = []
    for t in range(TEAMS):
        team = f"team_{t:04d}"
        if t % 10 == 1:
            # Hobby's $100 used up: nine days of 8 vCPU / 8 GiB cost about $115.
            batch += [
                event("created", team=team, execution=f"exe_{team}_big", sandbox=f"{team}_big",
                      time=rfc3339(now - timedelta(days=9)), vcpu=8, memory_mib=8192),
                event("killed", team=team, execution=f"exe_{team}_big", sandbox=f"{team}_big",
                      time=rfc3339(now - timedelta(minutes=5)), reason="request")]
        if t % 10 == 2:
            blocked.append(team)
        for s in range(2):
            name = f"{team}_{s}"
            age = 3601 if (t % 10 == 3 and s == 0) else 60 + t % 50
            batch += [
                event("created", team=team, execution=f"exe_{name}", sandbox=f"sbx_{name}",
                      time=rfc3339(now - timedelta(seconds=age)), vcpu=1 + s, memory_mib=512),
                event("host_stats", team=team, execution=f"exe_{name}", sandbox=f"sbx_{name}",
                      time=rfc3339(now - timedelta(seconds=1)))]
            reason = {1: "credit_exhausted", 2: "team_blocked"}.get(t % 10)
            if reason is None and t % 10 == 3 and s == 0:
                reason = "max_duration"
            if reason is not None:
                expected.add((f"exe_{name}", reason, team))
    post(client, api_keys, batch)
    with transaction(sessions) as session:
        for team in blocked:
            block_team(session, team, "unpaid_invoice", utc_now())

    jobs.refresh_liveness(sessions)
    watch = cold_watch()
    with statements(monkeypatch) as sent:
        first = jobs_enforcement.sweep_enforcement(sessions, STALE, watch)
    assert first.teams == TEAMS and first.executions == 2 * TEAMS
    assert first.looks == TEAMS - len(blocked)  # blocked teams need no look
    assert set(orders(sessions)) == expected
    assert len(first.kill_orders) == len(expected) == 500
    # 900 teams' limits, credit and spend in bulk reads of up to 250 teams (six statements
    # each), the fleet in one, the executions of the 300 teams with kills due in one.
    assert len(sent) <= 40, len(sent)
    # Nothing else is due, and nothing is issued twice.
    second = jobs_enforcement.sweep_enforcement(sessions, STALE, watch)
    assert second.kill_orders == []
    assert second.teams == TEAMS - 200 and second.executions == 2 * TEAMS - 500
