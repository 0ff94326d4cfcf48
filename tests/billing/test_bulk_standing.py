"""The enforcement sweep's bulk look (`PlanBilling.admission_many`, `metering.usage.
bucket_usage_many`) answers exactly what the per-team look answers, team by team: the credit a
Hobby team has left and the month's spend under a limit are what stop its sandboxes.

Teams with every kind of money history: grants (one expired, one with a priority), a closed
and invoiced month, an older month never closed, a price change in the middle of an hour,
running, stale and settled executions, resized ones, executions across month and price
boundaries, a spend limit, a plan change mid-month, and a team that does not exist.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from billing.credits.service import grant_credit
from billing.plans.service import BILLING, put_plan_version
from metering.config import Settings
from metering.db import transaction
from metering.usage import bucket_usage_many
from metering.usage.repository import bucket_usage
from tests.billing.test_close import DEC, NOV, OCT, SEP, close, iso, pin, put_team, run
from tests.conftest import Keys, event

# A clock in the middle of an hour, days into December; November closed and invoiced.
NOW = DEC + timedelta(days=9, hours=10, minutes=17, seconds=23, milliseconds=456)
PRICE_CHANGE = DEC + timedelta(days=5, hours=13, minutes=47, seconds=11, milliseconds=250)


def post(client: TestClient, keys: Keys, batch: list[dict[str, object]]) -> None:
    response = client.post("/v1/events", json=batch, headers=Keys.auth(keys.ingest))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(batch), response.text


def running(client: TestClient, keys: Keys, team: str, name: str, start: datetime,
            last: datetime, vcpu: int = 2, memory_mib: int = 1024,
            resized: datetime | None = None) -> None:
    """An execution started at `start` with no end; its newest sample at `last`."""
    batch = [event("created", team=team, execution=name, sandbox=f"sbx_{name}",
                   time=iso(start), vcpu=vcpu, memory_mib=memory_mib)]
    if resized is not None:
        batch.append(event("updated", team=team, execution=name, sandbox=f"sbx_{name}",
                           time=iso(resized), vcpu=vcpu * 2, memory_mib=memory_mib * 2))
    batch.append(event("host_stats", team=team, execution=name, sandbox=f"sbx_{name}",
                       time=iso(last)))
    post(client, keys, batch)


def test_the_bulk_look_equals_the_per_team_look_for_every_kind_of_team(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(DEC + timedelta(days=4))
    for team in ("h_open", "h_inv", "h_grants", "h_switch", "h_fresh"):
        put_team(client, api_keys, team, "hobby", SEP)
    for team in ("p_limit", "p_plain"):
        put_team(client, api_keys, team, "pro", SEP)
    response = client.put("/v1/teams/p_limit", json={"spend_limit": "40"},
                          headers=Keys.auth(api_keys.finance))
    assert response.status_code == 200, response.text
    # Settled usage: October (never closed for h_open), November (closed below), December;
    # across month ends and in partial hours.
    run(client, api_keys, "h_open", "o_oct", OCT + timedelta(days=3, minutes=7), 50 * 3600)
    run(client, api_keys, "h_open", "o_cross", NOV - timedelta(hours=2, minutes=13),
        5 * 3600 + 17)
    run(client, api_keys, "h_inv", "i_nov", NOV + timedelta(days=2, seconds=41), 80 * 3600)
    run(client, api_keys, "p_limit", "l_nov", NOV + timedelta(days=4), 30 * 3600)
    close(sessions, settings, "2026-11")
    pin(NOW)
    # Prices change for Hobby in the middle of an hour, and h_switch goes Pro at another odd
    # instant: both cut this month's usage.
    with transaction(sessions) as session:
        put_plan_version(session, "hobby", None, PRICE_CHANGE, {
            "vcpu_second_price": Decimal("0.0000171"), "gib_second_price": Decimal("0.0000049")})
        grant_credit(session, "h_grants", Decimal("25"), at=DEC, priority=1, reason="promo")
        grant_credit(session, "h_grants", Decimal("40"), at=NOV, reason="expired",
                     expires_at=DEC + timedelta(days=2, hours=5))
    put_team(client, api_keys, "h_switch", "pro", DEC + timedelta(days=6, minutes=29,
                                                                   seconds=3))
    for team in ("h_open", "h_inv", "h_grants", "h_switch", "p_limit", "p_plain"):
        run(client, api_keys, team, f"{team}_dec", PRICE_CHANGE - timedelta(hours=3,
                                                                            minutes=11), 7 * 3600 + 3)
        run(client, api_keys, team, f"{team}_hour", NOW - timedelta(minutes=40, seconds=9), 600)
        running(client, api_keys, team, f"{team}_run", PRICE_CHANGE - timedelta(hours=1),
                NOW - timedelta(seconds=2), vcpu=4, memory_mib=2048,
                resized=PRICE_CHANGE + timedelta(minutes=13))
        # Stale: no end, its newest event 20 minutes ago (ends there, inferred).
        running(client, api_keys, team, f"{team}_stale", NOW - timedelta(hours=2),
                NOW - timedelta(minutes=20))
    running(client, api_keys, "h_open", "o_late", NOW - timedelta(minutes=3),
            NOW - timedelta(seconds=1))

    teams = ["h_open", "h_inv", "h_grants", "h_switch", "h_fresh", "p_limit", "p_plain",
             "nobody"]
    with transaction(sessions) as session:
        alone = {t: BILLING.admission(session, t, NOW) for t in teams}
        schedules = {t: BILLING.price_schedule(session, t, NOW, NOW + timedelta(hours=1))
                     for t in teams}
        many = BILLING.admission_many(session, teams, NOW)
    assert sorted(many) == sorted(teams)
    for team in teams:
        limits, standing, schedule = many[team]
        assert (limits, standing) == alone[team], team
        assert schedule.at(NOW).prices == schedules[team].at(NOW).prices, team
    # The figures are not all zero: the comparison covers credit used, spend and limits.
    assert alone["h_open"][1].credit_used > alone["h_open"][1].month_spend > 0
    assert alone["h_inv"][1].credit_used > alone["h_inv"][1].month_spend > 0
    assert alone["p_limit"][1].month_spend > 0 and alone["p_limit"][1].credit_remaining is None
    assert alone["h_grants"][1].credit_granted == Decimal(125)
    assert alone["h_switch"][1].credit_remaining is None  # Pro now: credit does not stop it
    assert alone["h_fresh"][1].credit_remaining == Decimal(100)


# --------------------------------------------------------------------------- any layout


_T0 = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)
_examples = itertools.count()


def _moment(offset_s: int) -> datetime:
    return _T0 + timedelta(seconds=offset_s, milliseconds=offset_s % 997)


_layouts = st.lists(st.tuples(
    st.integers(0, 2),  # team
    st.integers(0, 30_000),  # start, seconds after _T0
    st.integers(1, 20_000),  # length
    st.sampled_from(["killed", "running", "stale", "resized"]),
    st.integers(1, 8),  # vcpu
), min_size=1, max_size=8)
_bounds = st.lists(st.integers(0, 40_000), min_size=2, max_size=5, unique=True)


@hypothesis_settings(max_examples=20, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=_layouts, bounds=st.lists(_bounds, min_size=3, max_size=3))
def test_bulk_usage_equals_per_team_usage_bucket_for_bucket(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
    layout: list[tuple[int, int, int, str, int]], bounds: list[list[int]],
) -> None:
    tag = str(next(_examples))  # each example its own teams and executions
    now = _T0 + timedelta(seconds=36_000, milliseconds=123)
    pin(now)
    batch: list[dict[str, object]] = []
    for n, (team, start, length, state, vcpu) in enumerate(layout):
        name, team_id = f"x{tag}_{n}", f"t{tag}_{team}"
        begin = _moment(start)
        batch.append(event("created", team=team_id, execution=name, sandbox=name,
                           time=iso(begin), vcpu=vcpu, memory_mib=512 * vcpu))
        end = min(begin + timedelta(seconds=length), now - timedelta(seconds=1))
        if state == "killed":
            batch.append(event("killed", team=team_id, execution=name, sandbox=name,
                               time=iso(end), reason="request"))
        elif state == "resized":
            batch.append(event("updated", team=team_id, execution=name, sandbox=name,
                               time=iso(begin + (end - begin) / 2), vcpu=vcpu + 1))
            batch.append(event("host_stats", team=team_id, execution=name, sandbox=name,
                               time=iso(now - timedelta(seconds=1))))
        else:
            last = now - timedelta(seconds=1) if state == "running" else end
            batch.append(event("host_stats", team=team_id, execution=name, sandbox=name,
                               time=iso(last)))
    post(client, api_keys, batch)
    stale = timedelta(seconds=60)
    asks = {f"t{tag}_{i}": [_moment(b) for b in sorted(team_bounds)]
            for i, team_bounds in enumerate(bounds)}
    with transaction(sessions) as session:
        alone = {t: bucket_usage(session, t, b, now, stale) for t, b in asks.items()}
        many = bucket_usage_many(session, asks, now, stale)
    assert many == alone
