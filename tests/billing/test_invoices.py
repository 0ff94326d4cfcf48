"""Invoices as users see them: team scoping, the upcoming preview, voids with correcting
invoices, credit burn-down, exports and revenue; and the pure assembly of rating inputs."""

from __future__ import annotations

import argparse
import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from billing.core.rating import rate
from billing.invoices.assemble import (
    BilledUsage,
    PlanAssignment,
    PlanVersionRow,
    TeamFacts,
    VersionUsage,
    plan_periods,
    prepare,
)
from billing.invoices.cli import add_invoice_commands, cmd_close
from metering.config import Settings
from metering.core.money import UnitPrices
from tests.billing.test_close import (
    HOUR,
    NOV,
    OCT,
    SEP,
    _invoices_router,  # noqa: F401 - the autouse fixture adding the router
    close,
    line_tuples,
    october_fleet,
    pin,
    put_team,
    query,
    run,
    team_invoices,
)
from tests.conftest import Keys

D = Decimal
PRICES = UnitPrices(D("0.000014"), D("0.0000045"))


def test_a_team_key_sees_only_its_own_invoices(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    october_fleet(client, api_keys)
    close(sessions, settings, "2026-10")
    pro_key = api_keys.team(sessions, "t_pro")
    [own] = client.get("/v1/teams/t_pro/invoices", headers=Keys.auth(pro_key)).json()["data"]
    assert client.get(f"/v1/invoices/{own['id']}", headers=Keys.auth(pro_key)).status_code == 200
    [other] = team_invoices(client, api_keys, "t_ent")
    for path in ("/v1/teams/t_ent/invoices", f"/v1/invoices/{other['id']}",
                 "/v1/teams/t_ent/invoices/upcoming"):
        response = client.get(path, headers=Keys.auth(pro_key))
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    # Finance-only routes refuse a team key outright.
    assert client.get("/v1/invoices", headers=Keys.auth(pro_key)).status_code == 403
    assert client.post(f"/v1/invoices/{own['id']}/void",
                       headers=Keys.auth(pro_key)).status_code == 403
    assert client.get("/v1/invoices/nope", headers=Keys.auth(api_keys.finance)).status_code == 404
    by_number = client.get(f"/v1/invoices/{own['number']}", headers=Keys.auth(pro_key))
    assert by_number.status_code == 200 and by_number.json()["id"] == own["id"]


def test_finance_lists_a_month_page_by_page(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    october_fleet(client, api_keys)
    close(sessions, settings, "2026-10")
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, str | int] = {"period": "2026-10", "limit": 2}
        if after:
            params["after"] = after
        body = client.get("/v1/invoices", params=params,
                          headers=Keys.auth(api_keys.finance)).json()
        seen += [i["number"] for i in body["data"]]
        after = body["next_cursor"]
        if after is None:
            break
    assert sorted(seen) == ["INV-2026-000001", "INV-2026-000002", "INV-2026-000003"]
    empty = client.get("/v1/invoices", params={"period": "2026-09"},
                       headers=Keys.auth(api_keys.finance)).json()
    assert empty == {"data": [], "next_cursor": None}


def test_upcoming_rates_the_open_month_without_storing_it(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    october_fleet(client, api_keys)
    close(sessions, settings, "2026-10")
    run(client, api_keys, "t_pro", "p_nov", NOV + timedelta(days=3), HOUR)
    run(client, api_keys, "t_pro", "p_late", OCT + timedelta(days=9), HOUR)  # October, late
    team_key = api_keys.team(sessions, "t_pro")
    response = client.get("/v1/teams/t_pro/invoices/upcoming", headers=Keys.auth(team_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["period"], body["status"]) == ("2026-11", "upcoming")
    assert line_tuples(body) == [
        ("plan_fee", "1", "150.00", "150.00"),
        ("usage_vcpu", "7200", "0.000014", "0.10"),
        ("usage_memory", "3600", "0.0000045", "0.02"),
        ("adjustment_vcpu", "7200", "0.000014", "0.10"),
        ("adjustment_memory", "3600", "0.0000045", "0.02"),
    ]
    assert body["total"] == "150.24"
    assert query(sessions, "SELECT count(*) FROM invoices")[0][0] == 3
    missing = client.get("/v1/teams/t_nobody/invoices/upcoming",
                         headers=Keys.auth(api_keys.finance))
    assert missing.status_code == 404


def test_void_issues_a_correcting_invoice_and_releases_credits(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    october_fleet(client, api_keys)
    close(sessions, settings, "2026-10")
    [hobby] = team_invoices(client, api_keys, "t_hobby")
    response = client.post(f"/v1/invoices/{hobby['id']}/void",
                           headers=Keys.auth(api_keys.finance))
    assert response.status_code == 200, response.text
    voided, correction = response.json()["voided"], response.json()["correction"]
    assert (voided["status"], voided["voided_at"] is not None) == ("void", True)
    assert correction["kind"] == "correction"
    assert correction["corrects_invoice_id"] == hobby["id"]
    assert (correction["period"], correction["status"]) == ("2026-10", "finalized")
    assert correction["number"] == "INV-2026-000004"
    # Same month, same usage; the credit the voided invoice used is available again.
    assert line_tuples(correction) == line_tuples(hobby)
    assert correction["total"] == "0.00"
    live = query(sessions, "SELECT a.amount FROM credit_applications a JOIN invoices i "
                           "ON i.id = a.invoice_id WHERE i.status <> 'void'")
    assert [r.amount for r in live] == [D("0.12")]
    # A void invoice cannot be voided again; the correction can.
    again = client.post(f"/v1/invoices/{hobby['id']}/void", headers=Keys.auth(api_keys.finance))
    assert again.status_code == 409
    # The correction counts as billing October: a later close adds nothing for it.
    pin(datetime(2026, 12, 1, 3, tzinfo=UTC))
    close(sessions, settings, "2026-11")
    assert query(sessions, "SELECT count(*) FROM invoices WHERE team_id = 't_hobby'")[0][0] == 2


def test_credits_burn_down_in_order_and_are_recorded(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(NOV + timedelta(days=10))
    put_team(client, api_keys, "t_c", "pro")
    run(client, api_keys, "t_c", "c1", OCT + timedelta(days=1), HOUR)
    grants = {}
    for name, amount, priority, expires in (
        ("late_low", "100", 1, None),
        ("expiring", "50", 0, "2026-12-31T00:00:00Z"),
        ("forever", "20", 0, None),
        ("expired", "500", 0, "2026-09-30T00:00:00Z"),
    ):
        body: dict[str, object] = {"amount": amount, "priority": priority, "reason": name}
        if expires:
            body["expires_at"] = expires
        if name == "expired":
            pin(datetime(2026, 9, 2, tzinfo=UTC))  # granted then, expired before October
        r = client.post("/v1/teams/t_c/credits", json=body, headers=Keys.auth(api_keys.finance))
        assert r.status_code == 201, r.text
        grants[r.json()["id"]] = name
        pin(NOV + timedelta(days=10))
    pin(NOV + timedelta(days=11))  # after the grants (re-pinning moved the clock back)
    close(sessions, settings, "2026-10")
    [invoice] = team_invoices(client, api_keys, "t_c")
    credits = [(line["metadata"]["grant_id"], line["amount"])
               for line in invoice["lines"] if line["kind"] == "credit"]
    # Named by the grant's reason for the customer; the grant's id only in metadata.
    assert [line["description"] for line in invoice["lines"] if line["kind"] == "credit"] == [
        "Credit applied · expiring", "Credit applied · forever", "Credit applied · late_low"]
    # priority 0 first, the expiring grant before the one that never expires, then priority 1.
    assert [(grants[g], a) for g, a in credits] == [
        ("expiring", "-50.00"), ("forever", "-20.00"), ("late_low", "-80.12")]
    assert (invoice["credits_applied"], invoice["total"]) == ("150.12", "0.00")
    applied = query(sessions, "SELECT grant_id, amount, period FROM credit_applications "
                              "ORDER BY amount")
    assert [(grants[r.grant_id], r.amount, r.period) for r in applied] == [
        ("forever", D("20.00"), "2026-10"), ("expiring", D("50.00"), "2026-10"),
        ("late_low", D("80.12"), "2026-10")]


def test_csv_export_and_revenue_summary(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    october_fleet(client, api_keys)
    close(sessions, settings, "2026-10")
    response = client.get("/v1/invoices/export", params={"period": "2026-10", "format": "csv"},
                          headers=Keys.auth(api_keys.finance))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert len(table) == 3 + 3 + 3  # fee+2 usage, 2 usage+true-up, 2 usage+credit
    pro = [r for r in table if r["team_id"] == "t_pro"]
    assert [(r["line_kind"], r["line_amount"], r["total"]) for r in pro] == [
        ("plan_fee", "150.00", "150.12"), ("usage_vcpu", "0.10", "150.12"),
        ("usage_memory", "0.02", "150.12")]
    team_key = api_keys.team(sessions, "t_pro")
    assert client.get("/v1/invoices/export", params={"period": "2026-10"},
                      headers=Keys.auth(team_key)).status_code == 403

    revenue = client.get("/v1/revenue", params={"period": "2026-10"},
                         headers=Keys.auth(api_keys.finance)).json()["data"]
    [month] = revenue
    assert (month["invoices"], month["subtotal"], month["credits_applied"], month["total"]) == (
        3, "3150.24", "0.12", "3150.12")
    by_plan = {p["plan_code"]: p for p in month["by_plan"]}
    assert (by_plan["pro"]["plan_fees"], by_plan["pro"]["usage"], by_plan["pro"]["amount"]) == (
        "150.00", "0.12", "150.12")
    assert by_plan["enterprise"]["commitment_true_up"] == "2999.88"
    assert by_plan["hobby"]["amount"] == "0.12"


def test_openapi_documents_the_invoice_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/teams/{team_id}/invoices", "/v1/teams/{team_id}/invoices/upcoming",
                 "/v1/invoices", "/v1/invoices/{invoice_id}", "/v1/invoices/close",
                 "/v1/invoices/{invoice_id}/void", "/v1/invoices/export", "/v1/revenue"):
        assert path in paths, path
    schema = paths["/v1/invoices/{invoice_id}"]["get"]["responses"]["200"]["content"]
    assert schema["application/json"]["schema"]["$ref"].endswith("/InvoiceOut")


def test_cli_wiring() -> None:
    parser = argparse.ArgumentParser(prog="metering")
    add_invoice_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["invoices", "close", "--period", "2026-10", "--dry-run"])
    assert (args.func, args.period, args.dry_run, args.force) == (cmd_close, "2026-10", True,
                                                                  False)
    args = parser.parse_args(["invoices", "export", "--period", "2026-10", "--format", "csv",
                              "--output", "x.csv"])
    assert args.output == "x.csv"


# --- pure assembly ---------------------------------------------------------------------------

VERSIONS = {
    "pro": [PlanVersionRow("pv_pro_1", "pro", datetime(1970, 1, 1, tzinfo=UTC), "usd",
                           D("150"), D("0")),
            PlanVersionRow("pv_pro_2", "pro", OCT + timedelta(days=15), "usd", D("200"),
                           D("0"))],
    "hobby": [PlanVersionRow("pv_hobby_1", "hobby", datetime(1970, 1, 1, tzinfo=UTC), "usd",
                             D("0"), D("0"))],
}


def test_plan_periods_split_at_versions_and_assignments() -> None:
    assignments = [PlanAssignment("hobby", SEP, OCT + timedelta(days=10)),
                   PlanAssignment("pro", OCT + timedelta(days=10), None)]
    periods, currencies = plan_periods(assignments, VERSIONS, OCT, NOV)
    assert [(p.plan_version_id, p.start.day, p.end.day if p.end < NOV else "end")
            for p in periods] == [("pv_hobby_1", 1, 11), ("pv_pro_1", 11, 16),
                                  ("pv_pro_2", 16, "end")]
    assert currencies == {"usd"}


def test_prepare_bills_the_difference_and_never_drops_usage() -> None:
    facts = TeamFacts(
        team_id="t", period_start=NOV, period_end=datetime(2026, 12, 1, tzinfo=UTC),
        default_currency="usd",
        assignments=(PlanAssignment("pro", SEP, None),),
        # Usage under a price version of no plan the team is on (the default schedule).
        usage=(VersionUsage("default", "default", PRICES, 3_600_000, 0),),
        late_usage={("2026-10", "pv_pro_2"): VersionUsage("pv_pro_2", "pro", PRICES,
                                                           10_000_000, 0)},
        late_billed={("2026-10", "pv_pro_2"): BilledUsage(7_000_000, 0, None, None),
                     ("2026-09", "pv_pro_1"): BilledUsage(1_000_000, 0, D("0.000014"),
                                                          D("0.0000045"))},
    )
    prepared = prepare(facts, VERSIONS)
    rated = rate(prepared.rating_input)
    assert [(line.kind, line.quantity, line.amount, line.period) for line in rated.lines] == [
        ("plan_fee", D(1), D("200.00"), None),
        ("usage_vcpu", D(3600), D("0.05"), None),
        ("adjustment_vcpu", D(-1000), D("-0.01"), "2026-09"),  # usage that went away
        ("adjustment_vcpu", D(3000), D("0.04"), "2026-10"),
    ]
    assert [(r.usage_period, r.price_version_id, r.vcpu_ms) for r in prepared.usage_records] == [
        ("2026-11", "default", 3_600_000), ("2026-09", "pv_pro_1", -1_000_000),
        ("2026-10", "pv_pro_2", 3_000_000)]
