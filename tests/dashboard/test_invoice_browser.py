"""An invoice in a real browser (Debian's Chromium driven by Playwright): from a usage line
down to a sandbox run's events, and the invoice printed to PDF with its total in the text."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from billing.invoices import close as month_close
from metering.config import Settings
from metering.core.clock import format_period, month_start
from tests.conftest import Keys, LiveServer, event
from tests.dashboard.conftest import iso
from tests.dashboard.test_browser import browser, console_errors, page, shot, sign_in

pypdf = pytest.importorskip("pypdf", reason="the pypdf package is not installed (dev extra)")
pytestmark = pytest.mark.usefixtures("dashboard_routes")
__all__ = ["browser", "console_errors", "page"]  # fixtures shared with the dashboard's test


def test_a_team_opens_an_invoice_line_a_sandbox_its_events_and_prints_the_invoice(
    page: Any, live_server: LiveServer, client: TestClient, api_keys: Keys,
    sessions: sessionmaker[Session], settings: Settings,
) -> None:
    last_month = month_start(month_start(datetime.now(UTC)) - timedelta(days=1))
    team = "team_print"
    r = client.put(f"/v1/teams/{team}", json={
        "name": "Print Co", "plan": "pro", "effective_at": iso(last_month - timedelta(days=5))},
        headers=Keys.auth(api_keys.finance))
    assert r.status_code == 200, r.text
    start = last_month + timedelta(days=3, hours=9)
    events = [
        event("created", team=team, execution="exe_p1", sandbox="sbx_print_a",
              time=iso(start), vcpu=2, memory_mib=1024, template_id="python"),
        event("updated", team=team, execution="exe_p1", sandbox="sbx_print_a",
              time=iso(start + timedelta(minutes=20)), vcpu=4),
        event("killed", team=team, execution="exe_p1", sandbox="sbx_print_a",
              time=iso(start + timedelta(minutes=50)), reason="request"),
        event("created", team=team, execution="exe_p2", sandbox="sbx_print_b",
              time=iso(start + timedelta(days=2)), vcpu=1, memory_mib=512),
        event("paused", team=team, execution="exe_p2", sandbox="sbx_print_b",
              time=iso(start + timedelta(days=2, hours=1))),
    ]
    r = client.post("/v1/events", json=events, headers=Keys.auth(api_keys.ingest))
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text
    summary = month_close.close_period(sessions, format_period(last_month), settings,
                                       force=True)
    assert summary.invoices_made == 1 and not summary.failures, summary.failures
    key = api_keys.team(sessions, team)
    [invoice] = client.get(f"/v1/teams/{team}/invoices", headers=Keys.auth(key)).json()["data"]

    base = live_server.url
    pg = page
    sign_in(pg, base, key)
    pg.wait_for_url(re.compile(rf"/dashboard/teams/{team}$"))
    pg.get_by_role("link", name="Invoices", exact=True).click()
    pg.get_by_role("link", name=invoice["number"]).click()
    pg.wait_for_url(re.compile(rf"/invoices/{invoice['id']}$"))
    text = pg.locator("main").inner_text()
    assert f"${invoice['total']}" in text
    assert "Pro plan · " in text and "pv_" not in text and "cg_" not in text
    shot(pg, "invoice-printable")

    # The printed invoice (what "save as PDF" gives the customer) carries the total.
    pdf = pg.pdf(format="A4", print_background=False)
    printed = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    assert f"${invoice['total']}" in printed, printed
    assert "Sign out" not in printed  # the page's chrome is not printed

    # A usage line: its sandbox runs, which add up to it.
    pg.get_by_role("link", name=re.compile(r"^vCPU time · ")).click()
    pg.wait_for_url(re.compile(r"/lines/\d+$"))
    runs = pg.locator("#line-executions tbody tr")
    assert runs.count() == 2
    assert "sbx_print_a" in runs.nth(1).inner_text()  # newest first
    shot(pg, "invoice-line")

    # One sandbox run: its lifecycle events and allocation over time.
    pg.get_by_role("link", name="sbx_print_a").click()
    pg.wait_for_url(re.compile(r"/runs/exe_p1$"))
    kinds = pg.locator("#execution-events tbody tr td:nth-child(2)").all_inner_texts()
    assert kinds == ["created", "updated", "killed"]
    assert pg.locator("#allocation tbody tr").count() == 2
    assert pg.locator("#allocation-chart rect").count() == 2
    shot(pg, "sandbox-run")
