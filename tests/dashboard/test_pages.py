"""The dashboard over HTTP (no browser): sessions, scoping, pages, live data, finance, CSV."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from billing.dashboard import cookies
from billing.invoices.export import CSV_COLUMNS
from metering.auth import service as keys
from metering.core.clock import format_period, month_start
from metering.db import transaction
from tests.conftest import Keys, event
from tests.dashboard.conftest import Fixture, iso, make_invoice, sign_in


def session_cookie(web: TestClient) -> str | None:
    return web.cookies.get(cookies.COOKIE_NAME)


# --- signing in and out ---------------------------------------------------------------------


def test_pages_ask_to_sign_in_and_come_back_after(web: TestClient, seeded: Fixture) -> None:
    r = web.get(f"/dashboard/teams/{seeded.team}/executions?q=sbx")
    assert r.status_code == 303
    assert r.headers["location"] == (
        f"/dashboard/sign-in?next=%2Fdashboard%2Fteams%2F{seeded.team}%2Fexecutions%3Fq%3Dsbx")
    form = web.get(r.headers["location"])
    assert form.status_code == 200
    assert '<label for="key">API key</label>' in form.text
    assert f'value="/dashboard/teams/{seeded.team}/executions?q=sbx"' in form.text
    r = web.post("/dashboard/sign-in", data={
        "key": seeded.key, "next": f"/dashboard/teams/{seeded.team}/executions?q=sbx"})
    assert r.status_code == 303
    assert r.headers["location"] == f"/dashboard/teams/{seeded.team}/executions?q=sbx"


def test_the_session_cookie_is_signed_http_only_secure_lax_and_never_holds_the_key(
    web: TestClient, seeded: Fixture,
) -> None:
    r = web.post("/dashboard/sign-in", data={"key": seeded.key})
    assert r.status_code == 303 and r.headers["location"] == f"/dashboard/teams/{seeded.team}"
    header = r.headers["set-cookie"]
    assert header.startswith(f"{cookies.COOKIE_NAME}=v1.key_")
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/dashboard", "Max-Age="):
        assert attribute.lower() in header.lower(), attribute
    assert seeded.key not in header
    assert seeded.key not in r.headers["location"]
    assert keys.digest(seeded.key) not in header
    assert web.get(f"/dashboard/teams/{seeded.team}").status_code == 200


def test_wrong_keys_are_refused_with_a_reason(
    web: TestClient, seeded: Fixture, api_keys: Keys,
) -> None:
    r = web.post("/dashboard/sign-in", data={"key": "mk_team_nonsense"})
    assert r.status_code == 401
    assert "not valid" in r.text and 'aria-invalid="true"' in r.text
    assert "mk_team_nonsense" not in r.text  # the key is never echoed
    assert session_cookie(web) is None
    r = web.post("/dashboard/sign-in", data={"key": api_keys.ingest})
    assert r.status_code == 403 and "ingest key cannot open the dashboard" in r.text
    r = web.post("/dashboard/sign-in", data={"key": ""})
    assert r.status_code == 401


def test_tampered_expired_and_revoked_sessions_are_signed_out(
    web: TestClient, seeded: Fixture, sessions: sessionmaker[Session], app: FastAPI,
) -> None:
    sign_in(web, seeded.key)
    value = session_cookie(web)
    assert value is not None
    overview = f"/dashboard/teams/{seeded.team}"
    version, key_id, expires, mac = value.split(".")

    web.cookies.clear()

    def with_cookie(cookie: str) -> int:
        return web.get(overview,
                       headers={"Cookie": f"{cookies.COOKIE_NAME}={cookie}"}).status_code

    assert with_cookie(value) == 200
    assert with_cookie(f"{version}.{key_id}.{int(expires) + 3600}.{mac}") == 303
    assert with_cookie(f"{version}.{key_id}.{expires}.{'0' * len(mac)}") == 303
    assert with_cookie("garbage") == 303
    # Another key's id with this cookie's MAC.
    with transaction(sessions) as session:
        other = keys.create_key(session, "team", seeded.team)
    assert with_cookie(f"{version}.{other.id}.{expires}.{mac}") == 303
    # Expired: a valid signature over a past expiry.
    past = cookies.sign(app.state.dashboard_secret, key_id, keys.digest(seeded.key), 1_000)
    assert with_cookie(past) == 303
    # Revoking the key ends its sessions at once.
    assert with_cookie(value) == 200
    with transaction(sessions) as session:
        keys.revoke_key(session, key_id)
    assert with_cookie(value) == 303
    assert web.get(f"/dashboard/api/teams/{seeded.team}/overview",
                   headers={"Cookie": f"{cookies.COOKIE_NAME}={value}"}).status_code == 401


def test_sign_out_clears_the_cookie(web: TestClient, seeded: Fixture) -> None:
    sign_in(web, seeded.key)
    r = web.post("/dashboard/sign-out")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/sign-in?signed_out=1"
    assert re.search(rf"{cookies.COOKIE_NAME}=\"?\"?;", r.headers["set-cookie"])
    assert "max-age=0" in r.headers["set-cookie"].lower()
    assert session_cookie(web) is None
    assert web.get(f"/dashboard/teams/{seeded.team}").status_code == 303
    assert "You are signed out" in web.get("/dashboard/sign-in?signed_out=1").text


def test_cross_site_posts_and_foreign_next_paths_are_refused(
    web: TestClient, seeded: Fixture,
) -> None:
    r = web.post("/dashboard/sign-in", data={"key": seeded.key},
                 headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and session_cookie(web) is None
    r = web.post("/dashboard/sign-in", data={"key": seeded.key},
                 headers={"Origin": "https://testserver"})
    assert r.status_code == 303
    assert web.post("/dashboard/sign-out",
                    headers={"Origin": "https://evil.example"}).status_code == 403
    for bad in ("https://evil.example/", "//evil.example/dashboard/", "/dashboard/\\evil",
                "/elsewhere"):
        r = web.post("/dashboard/sign-in", data={"key": seeded.key, "next": bad})
        assert r.headers["location"] == f"/dashboard/teams/{seeded.team}", bad


def test_home_sends_each_role_to_its_page(
    web: TestClient, seeded: Fixture, api_keys: Keys,
) -> None:
    assert web.get("/dashboard").headers["location"] == "/dashboard/sign-in"
    sign_in(web, seeded.key)
    assert web.get("/dashboard").headers["location"] == f"/dashboard/teams/{seeded.team}"
    sign_in(web, api_keys.finance)
    assert web.get("/dashboard").headers["location"] == "/dashboard/finance"


# --- the team's pages -----------------------------------------------------------------------


def test_overview_shows_the_live_balance_limits_chart_and_running_sandboxes(
    web: TestClient, client: TestClient, seeded: Fixture,
) -> None:
    sign_in(web, seeded.key)
    r = web.get(f"/dashboard/teams/{seeded.team}")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-store"
    balance = client.get(f"/v1/teams/{seeded.team}/balance",
                         headers=Keys.auth(seeded.key)).json()
    assert f'data-field="credit_remaining">${balance["credit_remaining"]}<' in r.text
    assert "Hobby plan limits" in r.text and "Concurrent sandboxes" in r.text
    assert 'role="meter"' in r.text and 'aria-valuemax="100.00"' in r.text
    assert seeded.running_sandbox in r.text and seeded.ended_sandbox not in r.text
    data = web.get(f"/dashboard/api/teams/{seeded.team}/overview").json()
    assert data["balance"]["figures"]["credit_remaining"] == f"${balance['credit_remaining']}"
    assert data["chart"]["granularity"] == "hour" and len(data["chart"]["points"]) == 24
    total = sum(Decimal(p["vcpu_seconds"]) for p in data["chart"]["points"])
    assert total >= 7200  # the ended sandbox: 2 vCPU for an hour, plus the running one
    assert [r["sandbox_id"] for r in data["running"]] == [seeded.running_sandbox]
    month = web.get(f"/dashboard/api/teams/{seeded.team}/overview?range=30d").json()
    assert month["chart"]["granularity"] == "day" and len(month["chart"]["points"]) == 30
    # An unknown range falls back to the default rather than failing the page.
    assert web.get(f"/dashboard/teams/{seeded.team}?range=year").status_code == 200


def test_a_team_key_sees_nothing_of_another_team(web: TestClient, seeded: Fixture) -> None:
    sign_in(web, seeded.other_key)
    for path in (f"/dashboard/teams/{seeded.team}",
                 f"/dashboard/teams/{seeded.team}/executions",
                 f"/dashboard/teams/{seeded.team}/invoices",
                 f"/dashboard/teams/{seeded.team}/invoices/{seeded.invoice_id}",
                 f"/dashboard/teams/{seeded.team}/sandboxes/{seeded.running_sandbox}",
                 f"/dashboard/teams/{seeded.other_team}/sandboxes/{seeded.running_sandbox}",
                 f"/dashboard/teams/{seeded.other_team}/invoices/{seeded.invoice_id}"):
        r = web.get(path)
        assert r.status_code == 404, path
        # The answer names only what was asked for: nothing of the team's own data.
        assert "Not found" in r.text
        assert "Team Dash" not in r.text and seeded.ended_sandbox not in r.text
    assert web.get(f"/dashboard/api/teams/{seeded.team}/overview").status_code == 404
    assert web.get(f"/dashboard/api/teams/{seeded.team}/sandboxes/"
                   f"{seeded.running_sandbox}").status_code == 404
    assert web.get("/dashboard/finance").status_code == 403
    assert web.get("/dashboard/finance/invoices.csv?period=2026-10").status_code == 403


def test_executions_are_paginated_and_searchable_by_sandbox_id(
    web: TestClient, client: TestClient, api_keys: Keys, seeded: Fixture,
) -> None:
    now = datetime.now(UTC)
    batch = []
    for i in range(55):
        begin = now - timedelta(hours=2, minutes=i)
        batch += [event("created", sandbox=f"sbx_page_{i:02d}", execution=f"exe_p{i}",
                        team=seeded.team, time=iso(begin), vcpu=1, memory_mib=512),
                  event("killed", sandbox=f"sbx_page_{i:02d}", execution=f"exe_p{i}",
                        team=seeded.team, time=iso(begin + timedelta(seconds=30)),
                        reason="request")]
    # LIKE's wildcard `_` in a search is literal: "sbx_odd" does not find "sbx1odd".
    batch += [event("created", sandbox="sbx1odd", execution="exe_odd", team=seeded.team,
                    time=iso(now - timedelta(hours=1)), vcpu=1, memory_mib=512),
              event("killed", sandbox="sbx1odd", execution="exe_odd", team=seeded.team,
                    time=iso(now - timedelta(minutes=50)), reason="request")]
    assert client.post("/v1/events", json=batch,
                       headers=Keys.auth(api_keys.ingest)).json()["rejected"] == 0
    sign_in(web, seeded.key)
    first = web.get(f"/dashboard/teams/{seeded.team}/executions")
    assert first.status_code == 200
    assert first.text.count('class="pill pill-ended"') == 50
    assert seeded.running_sandbox not in first.text  # only ended ones without a search
    older = re.search(r'href="([^"]+)" class="button secondary" rel="next"', first.text)
    assert older is not None
    second = web.get(older.group(1).replace("&amp;", "&"))
    assert second.text.count('class="pill pill-ended"') == 57 - 50  # 55 + odd + ended_1
    assert 'rel="next"' not in second.text
    search = web.get(f"/dashboard/teams/{seeded.team}/executions", params={"q": "sbx_page_1"})
    assert search.text.count("sbx_page_1") >= 10 and "sbx_page_20" not in search.text
    exact = web.get(f"/dashboard/teams/{seeded.team}/executions",
                    params={"q": seeded.running_sandbox})
    assert "pill-running" in exact.text
    odd = web.get(f"/dashboard/teams/{seeded.team}/executions", params={"q": "sbx1"})
    assert "sbx1odd" in odd.text and "sbx_page_" not in odd.text
    literal = web.get(f"/dashboard/teams/{seeded.team}/executions", params={"q": "sbx_odd"})
    assert "sbx1odd" not in literal.text
    none = web.get(f"/dashboard/teams/{seeded.team}/executions", params={"q": "zzz"})
    assert "No sandbox of this team" in none.text
    # Another team's sandbox ids are not searched.
    other = web.get(f"/dashboard/teams/{seeded.team}/executions",
                    params={"q": "sbx_elsewhere"})
    assert "No sandbox of this team" in other.text
    bad = web.get(f"/dashboard/teams/{seeded.team}/executions", params={"after": "nonsense"})
    assert bad.status_code == 400


def test_sandbox_page_has_metrics_and_its_executions(web: TestClient, seeded: Fixture) -> None:
    sign_in(web, seeded.key)
    r = web.get(f"/dashboard/teams/{seeded.team}/sandboxes/{seeded.running_sandbox}")
    assert r.status_code == 200 and "CPU use (% of the allocated vCPUs)" in r.text
    data = web.get(
        f"/dashboard/api/teams/{seeded.team}/sandboxes/{seeded.running_sandbox}").json()
    assert data["running"] is True and data["allocated_mib"] == 2048
    # What it had allocated, from its start, for the charts to draw use against.
    [allocated] = data["allocation"]
    assert (allocated["vcpu"], allocated["memory_mib"]) == (4, 2048)
    samples = sum(p["samples"] for p in data["metrics"]["points"])
    assert samples == 5
    assert web.get(f"/dashboard/teams/{seeded.team}/sandboxes/nope").status_code == 404
    # An ended sandbox that sent no samples: one plain statement, no empty charts.
    ended = web.get(f"/dashboard/teams/{seeded.team}/sandboxes/{seeded.ended_sandbox}").text
    assert ended.count('class="empty-state"') == 1
    assert 'id="metrics-charts" hidden' in ended.replace('class="charts two" ', "")
    assert "sent no <code>host_stats</code> events" in ended


def test_invoices_list_and_one_invoice_with_lines_and_stripe_state(
    web: TestClient, seeded: Fixture, sessions: sessionmaker[Session],
) -> None:
    make_invoice(sessions, seeded.other_team, "2026-09", invoice_id="inv_other",
                 number="INV-2026-000002")
    sign_in(web, seeded.key)
    r = web.get(f"/dashboard/teams/{seeded.team}/invoices")
    assert r.status_code == 200
    assert "INV-2026-000001" in r.text and "INV-2026-000002" not in r.text
    assert "Sent to Stripe, awaiting payment" in r.text
    one = web.get(f"/dashboard/teams/{seeded.team}/invoices/{seeded.invoice_id}")
    assert one.status_code == 200
    assert "Pro plan, monthly fee" in one.text and "$151.37" in one.text
    assert "97,857.142857" in one.text  # quantities exact
    assert f"in_{seeded.invoice_id}" in one.text


def test_a_team_without_invoices_reads_no_invoices_yet(
    web: TestClient, seeded: Fixture,
) -> None:
    sign_in(web, seeded.other_key)
    r = web.get(f"/dashboard/teams/{seeded.other_team}/invoices")
    assert r.status_code == 200 and "No invoices yet" in r.text


# --- finance --------------------------------------------------------------------------------


def test_finance_sees_the_months_invoices_revenue_and_teams_out_of_credit(
    web: TestClient, client: TestClient, api_keys: Keys, seeded: Fixture,
    sessions: sessionmaker[Session],
) -> None:
    finance = Keys.auth(api_keys.finance)
    # A Pro team with a $0.10 credit and more usage than that: past its credit.
    assert client.put("/v1/teams/team_pro", json={"name": "Pro Co", "plan": "pro"},
                      headers=finance).status_code == 200
    assert client.post("/v1/teams/team_pro/credits", json={"amount": "0.10"},
                       headers=finance).status_code == 201
    now = datetime.now(UTC)
    client.post("/v1/events", headers=Keys.auth(api_keys.ingest), json=[
        event("created", sandbox="sbx_pro", execution="exe_pro", team="team_pro",
              time=iso(now - timedelta(hours=2)), vcpu=2, memory_mib=1024),
        event("killed", sandbox="sbx_pro", execution="exe_pro", team="team_pro",
              time=iso(now - timedelta(hours=1)), reason="request")])
    period = format_period(month_start(now) - timedelta(days=1))  # the seeded invoice's
    make_invoice(sessions, seeded.other_team, period, invoice_id="inv_fail",
                 number="INV-2026-000009", status="sync_failed")
    with transaction(sessions) as session:
        from billing.invoices.models import Invoice

        failed = session.get(Invoice, "inv_fail")
        assert failed is not None
        failed.stripe_invoice_id = None
        failed.sync_error = "card_declined: =cmd|' /C calc'!A0"
    sign_in(web, api_keys.finance)
    r = web.get("/dashboard/finance", params={"period": period})
    assert r.status_code == 200
    page = r.text
    assert "INV-2026-000009" in page and "card_declined" in page
    # Problems first: the failed sync is listed before the synced invoice.
    assert page.index("INV-2026-000009") < page.index("INV-2026-000001")
    assert 'id="revenue-table"' in page and "Pro" in page
    watch = page.split('id="credit-watch"')[1].split("</table>")[0]
    assert "Pro Co" in watch and "past" in watch
    assert "Team Dash" not in watch  # a Hobby team that has used almost nothing
    assert f"/dashboard/finance/invoices.csv?period={period}" in page
    # The "open a team" form leads to that team's dashboard, which finance may read.
    jump = web.get("/dashboard/finance", params={"team": seeded.team})
    assert jump.headers["location"] == f"/dashboard/teams/{seeded.team}"
    assert web.get(jump.headers["location"]).status_code == 200
    assert web.get("/dashboard/finance", params={"period": "2026-13"}).status_code == 400


def test_finance_exports_the_month_as_csv(
    web: TestClient, api_keys: Keys, seeded: Fixture, sessions: sessionmaker[Session],
) -> None:
    make_invoice(sessions, seeded.other_team, "2026-09", invoice_id="inv_csv",
                 number="=HYPERLINK(1)")
    assert web.get("/dashboard/finance/invoices.csv?period=2026-09").status_code == 401
    sign_in(web, api_keys.finance)
    r = web.get("/dashboard/finance/invoices.csv?period=2026-09")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="invoices-2026-09.csv"' in r.headers["content-disposition"]
    lines = r.text.strip().split("\n")
    # The same columns as `metering invoices export`.
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert len(lines) == 3  # two lines of the one invoice
    assert lines[1].startswith("'=HYPERLINK(1),inv_csv,")  # a formula is shown, not run
    assert ",151.37," in lines[1]
    assert web.get("/dashboard/finance/invoices.csv?period=oops").status_code == 400


def test_static_files_are_served_with_their_types(web: TestClient) -> None:
    js = web.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    css = web.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "immutable" in css.headers["cache-control"]
    assert web.get("/dashboard/static/..%2Fendpoints.py").status_code == 404
    assert web.get("/dashboard/static/other.js").status_code == 404


def test_dashboard_routes_stay_out_of_the_api_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]
