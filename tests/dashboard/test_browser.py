"""The dashboard in a real browser (Debian's Chromium driven by Playwright) over real HTTP.

Skipped, with the reason, where /usr/bin/chromium or the playwright package is missing; CI
installs both. Screenshots go to tests/screenshots/ (not committed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from billing.dashboard.config import get_dashboard_settings
from tests.conftest import Keys, LiveServer
from tests.dashboard.conftest import Fixture, seed

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "screenshots"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); browser tests skipped",
                allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (dev extra)")

pytestmark = pytest.mark.usefixtures("dashboard_routes")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def console_errors() -> list[str]:
    return []


@pytest.fixture
def page(browser: Any, console_errors: list[str]) -> Iterator[Any]:
    """A desktop-sized page; any script error, CSP violation or failed load fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    pg.on("pageerror", lambda exc: console_errors.append(str(exc)))
    pg.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()
    assert not console_errors, console_errors


@pytest.fixture
def fast_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_dashboard_settings(), "poll_seconds", 1.0)


def shot(pg: Any, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(pg: Any, base: str, key: str) -> None:
    pg.goto(f"{base}/dashboard")
    pg.get_by_label("API key").fill(key)
    pg.get_by_role("button", name="Sign in").click()


def test_a_team_signs_in_reads_its_figures_and_signs_out(
    page: Any, live_server: LiveServer, client: TestClient, api_keys: Keys,
    sessions: sessionmaker[Session], fast_refresh: None,
) -> None:
    data = seed(client, api_keys, sessions)
    base = live_server.url
    pg = page
    sign_in(pg, base, data.key)
    pg.wait_for_url(re.compile(rf"/dashboard/teams/{data.team}$"))
    balance = client.get(f"/v1/teams/{data.team}/balance", headers=Keys.auth(data.key)).json()
    remaining = pg.locator('[data-field="credit_remaining"]').first
    assert remaining.inner_text() == f"${balance['credit_remaining']}"
    # The gauge and all three charts are drawn, with bars for the hours that had usage.
    pg.wait_for_selector("body[data-ready]")
    assert pg.locator("#credit-gauge svg path.value").count() == 1
    charts = pg.locator('[data-chart="usage"]')
    assert charts.count() == 3
    for i in range(3):
        assert int(charts.nth(i).get_attribute("data-drawn") or 0) >= 24
        assert float(charts.nth(i).get_attribute("data-max") or 0) > 0
    assert pg.locator('[data-chart="usage"] rect.bar').count() >= 72
    assert pg.locator("#running-table tbody tr").count() == 1
    # Live figures refresh without a reload, and a refresh keeps the running table's rows (and
    # so the link under the pointer) in place: it rewrites only the cells that changed.
    link = pg.locator("#running-table tbody a").first.element_handle()
    pg.wait_for_selector("body[data-refreshed]", state="attached", timeout=8000)
    stamp = pg.locator("body").get_attribute("data-refreshed")
    pg.wait_for_selector(f'body:not([data-refreshed="{stamp}"])', state="attached", timeout=8000)
    assert link.evaluate("a => a.isConnected")
    assert pg.locator("#running-table tbody tr").count() == 1
    shot(pg, "overview")

    # A running sandbox: its cpu and memory charts have the samples.
    pg.get_by_role("link", name=data.running_sandbox).first.click()
    pg.wait_for_url(re.compile(rf"/sandboxes/{data.running_sandbox}$"))
    pg.wait_for_selector("body[data-ready]")
    for kind in ("cpu", "mem"):
        drawn = pg.locator(f'[data-chart="metrics"][data-kind="{kind}"]').get_attribute("data-drawn")
        assert int(drawn or 0) >= 1, kind
    assert pg.locator('[data-chart="metrics"] path.line').count() >= 4
    shot(pg, "sandbox")

    # Executions: search by the beginning of a sandbox id.
    pg.get_by_role("link", name="Executions", exact=True).click()
    pg.get_by_label("Sandbox id").fill("sbx_end")
    pg.get_by_role("button", name="Search").click()
    pg.wait_for_url(re.compile(r"q=sbx_end"))
    rows = pg.locator("table.data tbody tr")
    assert rows.count() == 1 and data.ended_sandbox in rows.first.inner_text()
    shot(pg, "executions")

    # Invoices, then one invoice with its lines and Stripe state.
    pg.get_by_role("link", name="Invoices", exact=True).click()
    pg.get_by_role("link", name="INV-2026-000001").click()
    pg.wait_for_url(re.compile(rf"/invoices/{data.invoice_id}$"))
    assert pg.locator("#invoice-lines tbody tr").count() == 2
    assert "$151.37" in pg.locator("main").inner_text()
    assert f"in_{data.invoice_id}" in pg.locator("main").inner_text()
    shot(pg, "invoice")

    # Sign out: the pages are closed again.
    pg.get_by_role("button", name="Sign out").click()
    pg.wait_for_url(re.compile(r"/dashboard/sign-in"))
    assert "signed out" in pg.locator("main").inner_text()
    pg.goto(f"{base}/dashboard/teams/{data.team}")
    pg.wait_for_url(re.compile(r"/dashboard/sign-in\?next="))
    assert pg.context.cookies() == []


def test_another_teams_key_sees_none_of_the_first_teams_pages(
    page: Any, live_server: LiveServer, client: TestClient, api_keys: Keys,
    sessions: sessionmaker[Session], console_errors: list[str],
) -> None:
    data: Fixture = seed(client, api_keys, sessions)
    base = live_server.url
    pg = page
    sign_in(pg, base, data.other_key)
    pg.wait_for_url(re.compile(rf"/dashboard/teams/{data.other_team}$"))
    for path in (f"/dashboard/teams/{data.team}",
                 f"/dashboard/teams/{data.team}/sandboxes/{data.running_sandbox}",
                 f"/dashboard/teams/{data.other_team}/sandboxes/{data.running_sandbox}",
                 f"/dashboard/teams/{data.team}/invoices/{data.invoice_id}",
                 f"/dashboard/teams/{data.other_team}/invoices/{data.invoice_id}"):
        response = pg.goto(base + path)
        assert response.status == 404, path
        assert "Not found" in pg.locator("h1").inner_text()
    api = pg.request.get(f"{base}/dashboard/api/teams/{data.team}/overview")
    assert api.status == 404
    shot(pg, "other-team-404")
    # The browser reports each 404 page as a failed load: expected here, and nothing else.
    assert all("404" in e for e in console_errors), console_errors
    console_errors.clear()


def test_the_overview_reads_on_a_phone(
    browser: Any, live_server: LiveServer, client: TestClient, api_keys: Keys,
    sessions: sessionmaker[Session],
) -> None:
    data = seed(client, api_keys, sessions)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True, device_scale_factor=2)
    pg = context.new_page()
    try:
        sign_in(pg, live_server.url, data.key)
        pg.wait_for_selector("body[data-ready]")
        # Nothing wider than the screen but the tables, which scroll in their own box.
        overflow = pg.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        # Keyboard: the first Tab lands on the skip link, which is then visible.
        pg.keyboard.press("Tab")
        assert pg.evaluate("document.activeElement.className") == "skip-link"
        shot(pg, "overview-phone")
    finally:
        context.close()
