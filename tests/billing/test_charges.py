"""Explain a charge: a usage line's executions sum exactly to the line, in JSON pages and CSV;
an execution's events; team isolation. Hypothesis over resizes, pauses, month cuts, a price
change and a plan change mid-month, and inferred ends."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import timedelta
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings
from metering.core.money import round_minor
from tests.billing.test_close import NOV, OCT, SEP, close, iso, pin, put_team, query
from tests.conftest import Keys, event

DAY_MS = 86_400_000
USAGE = ("usage_vcpu", "usage_memory")


def post(client: TestClient, keys: Keys, batch: list[dict[str, Any]]) -> None:
    for i in range(0, len(batch), 5000):
        response = client.post("/v1/events", json=batch[i:i + 5000],
                               headers=Keys.auth(keys.ingest))
        assert response.status_code == 200 and response.json()["rejected"] == 0, response.text


def at(offset_ms: int) -> str:
    return iso(OCT + timedelta(milliseconds=offset_ms))


def invoice_of(sessions: sessionmaker[Session], team: str) -> tuple[str, list[Any]]:
    [(invoice_id,)] = query(sessions, "SELECT id FROM invoices WHERE team_id = :t", t=team)
    lines = query(sessions, """SELECT position, kind, quantity, unit_price, amount
                               FROM invoice_lines WHERE invoice_id = :i ORDER BY position""",
                  i=invoice_id)
    return invoice_id, lines


def all_rows(client: TestClient, key: str, url: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        page = client.get(url, params=params, headers=Keys.auth(key))
        assert page.status_code == 200, page.text
        body = page.json()
        rows += body["data"]
        after = body["next_cursor"]
        if after is None:
            return rows


def assert_sums_to(line: Any, rows: list[dict[str, Any]]) -> None:
    quantity = sum((Decimal(r["quantity"]) for r in rows), Decimal(0))
    cost = sum((Decimal(r["cost"]) for r in rows), Decimal(0))
    assert quantity == line.quantity
    assert cost == line.quantity * line.unit_price  # the line's unrounded amount
    assert round_minor(cost) == line.amount


def test_a_line_of_a_thousand_executions_is_explained_exactly(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(NOV + timedelta(days=10))
    put_team(client, api_keys, "t_big", "pro", SEP)
    put_team(client, api_keys, "t_other", "pro", SEP)
    batch: list[dict[str, Any]] = []
    for n in range(1000):
        start = n * 2_500_000 - DAY_MS  # from Sep 30 on: the first ones cross into October
        execution = f"x{n:04d}"
        common = {"team": "t_big", "execution": execution, "sandbox": f"sbx_{n % 300}"}
        batch.append(event("created", time=at(start), vcpu=1 + n % 4,
                           memory_mib=256 * (1 + n % 8), template_id="base", **common))
        if n % 7 == 0:
            batch.append(event("updated", time=at(start + 60_001), vcpu=8, **common))
        if n % 5:  # every fifth has no end event: it ended at its newest event
            batch.append(event("killed", time=at(start + 1_000 * (n % 97) + 123_457),
                               reason="request", **common))
    post(client, api_keys, batch)
    post(client, api_keys, [event("created", team="t_other", execution="o1", sandbox="sbx_1",
                                  time=at(DAY_MS), vcpu=2, memory_mib=512),
                            event("killed", team="t_other", execution="o1", sandbox="sbx_1",
                                  time=at(DAY_MS + 60_000))])
    summary = close(sessions, settings, "2026-10")
    assert summary.failures == [], summary.failures
    invoice_id, lines = invoice_of(sessions, "t_big")
    usage = [line for line in lines if line.kind in USAGE]
    assert [line.kind for line in usage] == list(USAGE)
    team_key = api_keys.team(sessions, "t_big")
    for line in usage:
        url = f"/v1/invoices/{invoice_id}/lines/{line.position}/executions"
        rows = all_rows(client, team_key, url, limit=300)
        # Nothing inside October: those that ended in September, and those without an end
        # event whose newest event is their start (their inferred end).
        assert len(rows) == sum(1 for n in range(1000)
                                if n >= 35 and not (n % 5 == 0 and n % 7 != 0))
        assert len({r["execution_id"] for r in rows}) == len(rows)
        assert_sums_to(line, rows)
        exported = client.get(url, params={"format": "csv"}, headers=Keys.auth(team_key))
        assert exported.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert [r["execution_id"] for r in table] == [r["execution_id"] for r in rows]
        assert_sums_to(line, [{"quantity": r["quantity"], "cost": r["cost"]} for r in table])

    first = client.get(f"/v1/invoices/{invoice_id}/lines/{usage[0].position}/executions",
                       params={"limit": 5}, headers=Keys.auth(team_key)).json()
    assert first["line"]["description"].startswith("vCPU time · ")
    newest = first["data"][0]
    assert (newest["execution_id"], newest["running"]) == ("x0999", False)
    crossing = [r for r in rows if r["execution_id"] == "x0000"]
    assert crossing == []  # created Sep 30, killed minutes later: nothing in October

    # Another team's key: the invoice and the execution do not exist for it.
    other = Keys.auth(api_keys.team(sessions, "t_other"))
    assert client.get(f"/v1/invoices/{invoice_id}/lines/{usage[0].position}/executions",
                      headers=other).status_code == 404
    assert client.get("/v1/executions/x0007/events", headers=other).status_code == 404
    fee = next(line for line in lines if line.kind == "plan_fee")
    refused = client.get(f"/v1/invoices/{invoice_id}/lines/{fee.position}/executions",
                         headers=Keys.auth(team_key))
    assert refused.status_code == 400 and "only usage lines" in refused.json()["error"]["message"]

    events = client.get("/v1/executions/x0007/events", headers=Keys.auth(team_key)).json()
    assert [e["type"].rsplit(".", 1)[1] for e in events["data"]] == [
        "created", "updated", "killed"]
    assert [(a["vcpu"], a["memory_mib"]) for a in events["allocation"]] == [(4, 2048),
                                                                            (8, 2048)]


_teams = itertools.count()

resize = st.tuples(st.integers(0, 2 * DAY_MS), st.one_of(st.none(), st.integers(1, 8)),
                   st.one_of(st.none(), st.sampled_from([512, 2048])))
execution = st.fixed_dictionaries({
    "start": st.integers(-2 * DAY_MS, 31 * DAY_MS - 1),
    "vcpu": st.integers(1, 8),
    "memory_mib": st.sampled_from([256, 1024, 4096]),
    "resizes": st.lists(resize, max_size=3),
    "end": st.one_of(st.none(), st.tuples(st.sampled_from(["paused", "killed"]),
                                          st.integers(0, 3 * DAY_MS))),
})


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(executions=st.lists(execution, min_size=1, max_size=8),
       plan_change=st.one_of(st.none(), st.integers(DAY_MS, 30 * DAY_MS)))
def test_every_usage_line_is_the_exact_sum_of_its_executions(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
    executions: list[dict[str, Any]], plan_change: int | None,
) -> None:
    pin(NOV + timedelta(days=10))
    if not query(sessions, "SELECT 1 FROM plan_versions WHERE plan_code = 'pro' "
                           "AND effective_at = :t", t=OCT + timedelta(days=15)):
        # A price change in the middle of the month, for every Pro team.
        r = client.put("/v1/plans/pro", json={"effective_at": iso(OCT + timedelta(days=15)),
                                              "vcpu_second_price": "0.0000123",
                                              "gib_second_price": "0.0000031"},
                       headers=Keys.auth(api_keys.admin))
        assert r.status_code in (200, 201), r.text
    team = f"hx{next(_teams)}"
    if plan_change is None:
        put_team(client, api_keys, team, "pro", SEP)
    else:
        put_team(client, api_keys, team, "hobby", SEP)
        put_team(client, api_keys, team, "pro", OCT + timedelta(milliseconds=plan_change))
    batch: list[dict[str, Any]] = []
    for n, x in enumerate(executions):
        common = {"team": team, "execution": f"{team}_{n}", "sandbox": f"sbx_{n}"}
        batch.append(event("created", time=at(x["start"]), vcpu=x["vcpu"],
                           memory_mib=x["memory_mib"], **common))
        for k, (offset, vcpu, memory) in enumerate(x["resizes"]):
            if vcpu is None and memory is None:
                continue
            data = {k2: v for k2, v in (("vcpu", vcpu), ("memory_mib", memory)) if v}
            batch.append(event("updated", time=at(x["start"] + offset), id=f"{team}_{n}_u{k}",
                               **common, **data))
        if x["end"] is not None:
            kind, duration = x["end"]
            batch.append(event(kind, time=at(x["start"] + duration), **common))
    post(client, api_keys, batch)
    summary = close(sessions, settings, "2026-10")
    assert [f for f in summary.failures if f.team_id == team] == []
    made = query(sessions, "SELECT id FROM invoices WHERE team_id = :t", t=team)
    if not made:
        return  # nothing to bill
    invoice_id, lines = invoice_of(sessions, team)
    for line in lines:
        if line.kind in USAGE:
            rows = all_rows(client, api_keys.finance,
                            f"/v1/invoices/{invoice_id}/lines/{line.position}/executions",
                            limit=3)
            assert_sums_to(line, rows)


def test_the_upcoming_invoice_is_explained_as_of_the_read(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    now = NOV + timedelta(days=19, hours=12)
    pin(now)
    put_team(client, api_keys, "t_up", "pro", SEP)
    put_team(client, api_keys, "t_else", "pro", SEP)
    common = {"team": "t_up", "sandbox": "sbx_up"}
    post(client, api_keys, [
        event("created", execution="u1", time=iso(NOV + timedelta(days=2)), vcpu=2,
              memory_mib=1024, **common),
        event("killed", execution="u1", time=iso(NOV + timedelta(days=2, hours=1)), **common),
        # Running now: its usage grows up to the moment of the read.
        event("created", execution="u2", time=iso(now - timedelta(minutes=30)), vcpu=4,
              memory_mib=2048, **common),
        event("updated", execution="u2", time=iso(now - timedelta(seconds=5)), vcpu=8, **common),
    ])
    key = api_keys.team(sessions, "t_up")
    upcoming = client.get("/v1/teams/t_up/invoices/upcoming", headers=Keys.auth(key)).json()
    [position] = [x["position"] for x in upcoming["lines"] if x["kind"] == "usage_vcpu"]
    page = client.get(f"/v1/teams/t_up/invoices/upcoming/lines/{position}/executions",
                      headers=Keys.auth(key))
    assert page.status_code == 200, page.text
    body = page.json()
    assert [r["execution_id"] for r in body["data"]] == ["u2", "u1"]
    assert body["data"][0]["running"] is True and body["data"][0]["ended_at"] is None
    line = body["line"]  # rated at the same instant as its executions
    assert sum((Decimal(r["quantity"]) for r in body["data"]), Decimal(0)) == Decimal(
        line["quantity"])
    assert round_minor(sum((Decimal(r["cost"]) for r in body["data"]), Decimal(0))) == Decimal(
        line["amount"])
    other = api_keys.team(sessions, "t_else")
    assert client.get(f"/v1/teams/t_up/invoices/upcoming/lines/{position}/executions",
                      headers=Keys.auth(other)).status_code == 404
