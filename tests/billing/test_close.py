"""The month close against real PostgreSQL: worked invoices, numbering, idempotence under
repetition and concurrency, late usage as adjustments, the grace period, dry runs, failure
isolation and the scheduled job. Usage enters through the real ingest API.

The helpers at the top are shared with test_invoices.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing.invoices import close as month_close
from billing.invoices import service
from billing.invoices.endpoints import router
from metering.config import Settings
from metering.core import clock
from metering.db import transaction
from metering.errors import Conflict
from tests.conftest import Keys, event

SEP = datetime(2026, 9, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
HOUR = 3600


# --- helpers (shared with test_invoices.py) --------------------------------------------------


def include_router(app: FastAPI) -> None:
    """Add the invoices router to the test app once, if the app lacks it."""
    # Routers are included lazily (no route paths to look at): ask the OpenAPI document.
    if "/v1/invoices/{invoice_id}" not in app.openapi()["paths"]:
        app.include_router(router)
        app.openapi_schema = None


def pin(moment: datetime) -> None:
    """Make utc_now() read `moment` (it then advances with the wall clock)."""
    clock.set_offset(moment - datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def put_team(client: TestClient, keys: Keys, team: str, plan: str, at: datetime = SEP) -> None:
    response = client.put(f"/v1/teams/{team}", json={"plan": plan, "effective_at": iso(at)},
                          headers=Keys.auth(keys.finance))
    assert response.status_code == 200, response.text


def run(client: TestClient, keys: Keys, team: str, execution: str, start: datetime,
        seconds: int, vcpu: int = 2, memory_mib: int = 1024) -> None:
    """An execution of `seconds` at fixed resources, created and killed."""
    sandbox = f"sbx_{execution}"
    batch = [
        event("created", team=team, execution=execution, sandbox=sandbox, time=iso(start),
              vcpu=vcpu, memory_mib=memory_mib),
        event("killed", team=team, execution=execution, sandbox=sandbox,
              time=iso(start + timedelta(seconds=seconds)), reason="request"),
    ]
    response = client.post("/v1/events", json=batch, headers=Keys.auth(keys.ingest))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2, response.text


def close(sessions: sessionmaker[Session], settings: Settings, period: str,
          **kwargs: Any) -> month_close.CloseSummary:
    return month_close.close_period(sessions, period, settings, **kwargs)


def query(sessions: sessionmaker[Session], sql: str, **params: Any) -> list[Any]:
    with transaction(sessions) as session:
        return list(session.execute(text(sql), params))


def team_invoices(client: TestClient, keys: Keys, team: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/teams/{team}/invoices", headers=Keys.auth(keys.finance))
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def line_tuples(invoice: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(line["kind"], line["quantity"], line["unit_price"], line["amount"])
            for line in invoice["lines"]]


@pytest.fixture(autouse=True)
def _invoices_router(app: FastAPI) -> None:
    include_router(app)


def october_fleet(client: TestClient, keys: Keys) -> None:
    """Pro, Enterprise and Hobby teams each running 2 vCPU / 1 GiB for one hour in October;
    an idle Hobby team."""
    pin(NOV + timedelta(days=10))
    for team, plan in (("t_pro", "pro"), ("t_ent", "enterprise"), ("t_hobby", "hobby"),
                       ("t_idle", "hobby")):
        put_team(client, keys, team, plan)
    for team in ("t_pro", "t_ent", "t_hobby"):
        run(client, keys, team, f"{team}_e1", OCT + timedelta(days=4, hours=10), HOUR)


# --- tests ------------------------------------------------------------------------------------


def test_a_month_becomes_invoices_with_the_worked_numbers(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    october_fleet(client, api_keys)
    summary = close(sessions, settings, "2026-10")
    assert (summary.teams_considered, summary.invoices_made, summary.already_existed) == (3, 3, 0)
    assert summary.total_amount == {"usd": Decimal("3150.12")}
    assert not summary.failures

    # 2 vCPU x 1 h = 7200 vCPU-s x 0.000014 = 0.1008 -> 0.10; 1 GiB x 1 h = 3600 GiB-s x
    # 0.0000045 = 0.0162 -> 0.02.
    usage = [("usage_vcpu", "7200", "0.000014", "0.10"),
             ("usage_memory", "3600", "0.0000045", "0.02")]
    [pro] = team_invoices(client, api_keys, "t_pro")
    assert line_tuples(pro) == [("plan_fee", "1", "150.00", "150.00"), *usage]
    assert (pro["subtotal"], pro["credits_applied"], pro["total"]) == ("150.12", "0.00", "150.12")
    assert pro["period"] == "2026-10" and pro["status"] == "finalized" and pro["stripe"] is None

    [ent] = team_invoices(client, api_keys, "t_ent")
    # The true-up brings the month to exactly the $3,000 commitment.
    assert line_tuples(ent) == [*usage, ("commitment_true_up", "1", "2999.88", "2999.88")]
    assert ent["total"] == "3000.00"

    [hobby] = team_invoices(client, api_keys, "t_hobby")
    assert line_tuples(hobby) == [*usage, ("credit", "1", "-0.12", "-0.12")]
    # A zero-total invoice is still made: it is the record of the month.
    assert (hobby["credits_applied"], hobby["total"]) == ("0.12", "0.00")
    assert team_invoices(client, api_keys, "t_idle") == []

    # Numbered gap-free in team order, in the year of finalization.
    assert [(r.team_id, r.number) for r in query(
        sessions, "SELECT team_id, number FROM invoices ORDER BY number")] == [
        ("t_ent", "INV-2026-000001"), ("t_hobby", "INV-2026-000002"),
        ("t_pro", "INV-2026-000003")]
    applied = query(sessions, "SELECT a.team_id, a.amount, g.kind FROM credit_applications a "
                              "JOIN credit_grants g ON g.id = a.grant_id")
    assert [(r.team_id, r.amount, r.kind) for r in applied] == [("t_hobby", Decimal("0.12"),
                                                                  "plan")]
    billed = query(sessions, "SELECT team_id, usage_period, price_version_id, vcpu_ms, mib_ms "
                             "FROM invoice_usage ORDER BY team_id")
    assert [tuple(r) for r in billed] == [
        (team, "2026-10", f"pv_{plan}_1", 7_200_000, 3_600_000 * 1024)
        for team, plan in (("t_ent", "enterprise"), ("t_hobby", "hobby"), ("t_pro", "pro"))]
    messages = query(sessions, "SELECT key, payload FROM outbox_messages "
                               "WHERE type = 'invoice.finalized' ORDER BY key")
    assert len(messages) == 3
    assert {m.payload["data"]["number"] for m in messages} == {
        "INV-2026-000001", "INV-2026-000002", "INV-2026-000003"}
    assert all(m.key == f"invoice.finalized:{m.payload['data']['invoice_id']}" for m in messages)
    [run_row] = query(sessions, "SELECT status, invoices_made FROM invoice_close_runs")
    assert (run_row.status, run_row.invoices_made) == ("completed", 3)


def test_closing_twice_makes_nothing_new(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    october_fleet(client, api_keys)
    first = close(sessions, settings, "2026-10")
    second = close(sessions, settings, "2026-10")
    assert (first.invoices_made, second.invoices_made, second.already_existed) == (3, 0, 3)
    assert second.total_amount == {}
    assert query(sessions, "SELECT count(*) FROM invoices")[0][0] == 3
    assert query(sessions, "SELECT last_number FROM invoice_number_sequences")[0][0] == 3


def test_two_closes_at_once_make_each_invoice_once(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(NOV + timedelta(days=10))
    teams = [f"t_{i:02d}" for i in range(12)]
    for i, team in enumerate(teams):
        put_team(client, api_keys, team, "pro")
        run(client, api_keys, team, f"{team}_e", OCT + timedelta(days=2, minutes=i), 600)
    barrier = threading.Barrier(2)
    results: list[month_close.CloseSummary] = []
    errors: list[BaseException] = []

    def closer() -> None:
        try:
            barrier.wait()
            results.append(close(sessions, settings, "2026-10", chunk_size=3))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=closer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sum(r.invoices_made for r in results) == 12
    assert all(r.invoices_made + r.already_existed == 12 for r in results)
    numbers = [r.number for r in query(sessions, "SELECT number FROM invoices ORDER BY number")]
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 13)]
    assert query(sessions, "SELECT count(DISTINCT team_id) FROM invoices")[0][0] == 12


def test_late_usage_is_an_adjustment_on_the_next_invoice_and_billed_once(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(NOV + timedelta(days=10))
    put_team(client, api_keys, "t_a", "pro")
    run(client, api_keys, "t_a", "a_oct", OCT + timedelta(days=4), HOUR)
    assert close(sessions, settings, "2026-10").invoices_made == 1
    # Events of an October execution arrive after October was closed: 4 vCPU and 4 GiB for
    # 10 h = 144,000 vCPU-s x 0.000014 = 2.016 -> 2.02, 144,000 GiB-s x 0.0000045 = 0.648 -> 0.65.
    run(client, api_keys, "t_a", "a_late", OCT + timedelta(days=20), 10 * HOUR,
        vcpu=4, memory_mib=4096)
    [october] = team_invoices(client, api_keys, "t_a")
    assert october["total"] == "150.12"  # a finalized invoice never changes

    pin(DEC + timedelta(hours=3))
    assert close(sessions, settings, "2026-11").invoices_made == 1
    november = next(i for i in team_invoices(client, api_keys, "t_a") if i["period"] == "2026-11")
    assert line_tuples(november) == [
        ("plan_fee", "1", "150.00", "150.00"),
        ("adjustment_vcpu", "144000", "0.000014", "2.02"),
        ("adjustment_memory", "144000", "0.0000045", "0.65"),
    ]
    assert [line["period"] for line in november["lines"]] == [None, "2026-10", "2026-10"]
    assert november["total"] == "152.67"

    # Closing again, or the following month, bills the late usage no second time.
    assert close(sessions, settings, "2026-11").invoices_made == 0
    pin(JAN + timedelta(hours=3))
    assert close(sessions, settings, "2026-12").invoices_made == 1
    december = next(i for i in team_invoices(client, api_keys, "t_a") if i["period"] == "2026-12")
    assert line_tuples(december) == [("plan_fee", "1", "150.00", "150.00")]
    assert december["number"] == "INV-2027-000001"  # numbered in the year it was finalized
    [billed] = query(sessions, "SELECT sum(vcpu_ms) AS v, sum(mib_ms) AS m FROM invoice_usage "
                               "WHERE team_id = 't_a' AND usage_period = '2026-10'")
    assert (billed.v, billed.m) == (2 * HOUR * 1000 + 4 * 10 * HOUR * 1000,
                                    1024 * HOUR * 1000 + 4096 * 10 * HOUR * 1000)


def test_a_team_with_only_late_usage_gets_an_invoice(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    """A Hobby team idle in October and November, whose October usage arrives late."""
    pin(NOV + timedelta(days=10))
    put_team(client, api_keys, "t_h", "hobby")
    assert close(sessions, settings, "2026-10").teams_considered == 0
    run(client, api_keys, "t_h", "h_late", OCT + timedelta(days=30), HOUR)
    pin(DEC + timedelta(hours=3))
    summary = close(sessions, settings, "2026-11")
    assert summary.invoices_made == 1
    [invoice] = team_invoices(client, api_keys, "t_h")
    assert [k for k, *_ in line_tuples(invoice)] == [
        "adjustment_vcpu", "adjustment_memory", "credit"]
    assert invoice["total"] == "0.00" and invoice["credits_applied"] == "0.12"


def test_close_waits_for_the_grace_period_unless_forced(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(NOV + timedelta(days=10))
    with pytest.raises(Conflict, match="has not ended"):
        close(sessions, settings, "2026-11", force=True)
    pin(DEC + timedelta(hours=1))
    with pytest.raises(Conflict, match="can be closed from 2026-12-01T02:00:00"):
        close(sessions, settings, "2026-11")
    response = client.post("/v1/invoices/close", json={"period": "2026-11"},
                           headers=Keys.auth(api_keys.finance))
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
    assert close(sessions, settings, "2026-11", force=True).invoices_made == 0
    [r] = query(sessions, "SELECT forced, status FROM invoice_close_runs")
    assert (r.forced, r.status) == (True, "completed")


def test_dry_run_rates_and_writes_nothing(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    october_fleet(client, api_keys)
    response = client.post("/v1/invoices/close", json={"period": "2026-10", "dry_run": True},
                           headers=Keys.auth(api_keys.finance))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["dry_run"], body["invoices_made"], body["run_id"]) == (True, 3, None)
    assert body["total_amount"] == {"usd": "3150.12"}
    assert {(p["team_id"], p["total"]) for p in body["previews"]} == {
        ("t_pro", "150.12"), ("t_ent", "3000.00"), ("t_hobby", "0.00")}
    assert query(sessions, "SELECT count(*) FROM invoices")[0][0] == 0
    assert query(sessions, "SELECT count(*) FROM invoice_close_runs")[0][0] == 0
    assert query(sessions, "SELECT count(*) FROM credit_applications")[0][0] == 0


def test_close_endpoint_answers_the_summary_and_needs_finance(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    october_fleet(client, api_keys)
    team_key = api_keys.team(sessions, "t_pro")
    refused = client.post("/v1/invoices/close", json={"period": "2026-10"},
                          headers=Keys.auth(team_key))
    assert refused.status_code == 403
    response = client.post("/v1/invoices/close", json={"period": "2026-10"},
                           headers=Keys.auth(api_keys.finance))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["teams_considered"], body["invoices_made"], body["already_existed"]) == (3, 3, 0)
    assert body["skipped"] == {} and body["failures"] == [] and body["run_id"]
    bad = client.post("/v1/invoices/close", json={"period": "October"},
                      headers=Keys.auth(api_keys.finance))
    assert bad.status_code == 422


def test_one_failing_team_does_not_stop_the_others_and_a_rerun_resumes(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    october_fleet(client, api_keys)
    real = service.notify_finalized

    def failing(session: Session, stored: Any, now: datetime) -> None:
        if any(s.team_id == "t_hobby" for s in stored):
            raise RuntimeError("outbox down for t_hobby")
        real(session, stored, now)

    monkeypatch.setattr(service, "notify_finalized", failing)
    summary = close(sessions, settings, "2026-10")
    assert summary.invoices_made == 2
    assert [(f.team_id, f.reason) for f in summary.failures] == [
        ("t_hobby", "RuntimeError: outbox down for t_hobby")]
    assert summary.skipped == {"failed": 1}
    [r] = query(sessions, "SELECT status, failed FROM invoice_close_runs")
    assert (r.status, r.failed) == ("completed_with_errors", 1)
    # Nothing of the failed team's invoice survived: no number taken, no credit applied.
    assert query(sessions, "SELECT count(*) FROM credit_applications")[0][0] == 0

    monkeypatch.setattr(service, "notify_finalized", real)
    again = close(sessions, settings, "2026-10")
    assert (again.invoices_made, again.already_existed) == (1, 2)
    numbers = [r.number for r in query(sessions, "SELECT number FROM invoices ORDER BY number")]
    assert numbers == ["INV-2026-000001", "INV-2026-000002", "INV-2026-000003"]


def test_the_scheduled_job_closes_last_month_once_after_the_grace(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(NOV + timedelta(days=10))
    put_team(client, api_keys, "t_pro", "pro", NOV)
    run(client, api_keys, "t_pro", "p_nov", NOV + timedelta(days=2), HOUR)
    assert month_close.close_due_periods(sessions, settings, DEC + timedelta(hours=1)) == []
    done = month_close.close_due_periods(sessions, settings, DEC + timedelta(hours=3))
    assert [(s.period, s.invoices_made) for s in done] == [("2026-11", 1)]
    assert month_close.close_due_periods(sessions, settings, DEC + timedelta(hours=4)) == []
    assert query(sessions, "SELECT count(*) FROM invoice_close_runs")[0][0] == 1
