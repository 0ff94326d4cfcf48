"""Every dashboard page in a real browser at a phone's width (390 px) and a desktop's (1440 px):
no sideways page scroll, every amount on screen, no id or invoice number broken across lines,
sandbox charts that draw what was allocated under unrepeated time labels, and one clear state
for a sandbox without samples.

Debian's Chromium driven by Playwright, as in test_browser.py (skipped, with the reason, where
either is missing). Screenshots go to tests/screenshots/ (the ones in docs/ come from here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import Keys, LiveServer, event
from tests.dashboard.conftest import Fixture, iso, make_invoice, seed

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
WIDTHS = {"phone": (390, 844), "desktop": (1440, 900)}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


# Measured in the page: each finding names the page and the element.
LAYOUT_PROBLEMS = """
() => {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > window.innerWidth) {
    problems.push(`page scrolls sideways: ${root.scrollWidth} px wide in ${window.innerWidth}`);
  }
  for (const el of document.querySelectorAll('.mono')) {
    if (!el.offsetParent) continue;
    if (el.getClientRects().length > 1) problems.push(`id broken across lines: ${el.textContent}`);
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).display !== 'inline') {
      problems.push(`id cut short: ${el.textContent}`);
    }
  }
  return problems;
}
"""

# Amounts: on screen horizontally and not hidden under anything (e.g. the scrolled-away part
# of a table box). The page is scrolled vertically only, so a table's own scroll stays put.
HIDDEN_AMOUNTS = """
(selector) => {
  const hidden = [];
  for (const el of document.querySelectorAll(selector)) {
    if (!el.offsetParent) continue;
    const top = el.getBoundingClientRect().top + window.scrollY;
    window.scrollTo(0, Math.max(0, top - window.innerHeight / 2));
    const r = el.getBoundingClientRect();
    const x = r.left + Math.min(r.width / 2, 8), y = r.top + r.height / 2;
    const hit = document.elementFromPoint(x, y);
    const visible = r.left >= 0 && r.right <= window.innerWidth && hit && el.contains(hit);
    if (!visible) hidden.push(`${el.textContent.trim()} at x ${Math.round(r.left)}-${Math.round(r.right)}`);
  }
  window.scrollTo(0, 0);
  return hidden;
}
"""


def check(pg: Any, name: str, amounts: str | None = None) -> None:
    pg.wait_for_selector("body[data-ready]")
    problems = pg.evaluate(LAYOUT_PROBLEMS)
    if amounts:
        assert pg.locator(amounts).count() > 0, f"{name}: no amounts found ({amounts})"
        problems += [f"amount out of view: {a}" for a in pg.evaluate(HIDDEN_AMOUNTS, amounts)]
    assert not problems, f"{name}: {problems}"


def shot(pg: Any, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"))


def sign_in(pg: Any, base: str, key: str) -> None:
    pg.goto(f"{base}/dashboard/sign-in")
    pg.get_by_label("API key").fill(key)
    pg.get_by_role("button", name="Sign in").click()
    pg.wait_for_selector("body[data-ready]")


def enterprise_team(client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]) -> str:
    """An Enterprise team with some usage this month and an invoice with a long number."""
    team = "team_enterprise_acme"
    r = client.put(f"/v1/teams/{team}", json={"name": "Acme Corporation", "plan": "enterprise"},
                   headers=Keys.auth(api_keys.finance))
    assert r.status_code == 200, r.text
    now = datetime.now(UTC)
    begin = max(now - timedelta(hours=2), now.replace(day=1, hour=0, minute=0, second=0,
                                                      microsecond=0))
    r = client.post("/v1/events", headers=Keys.auth(api_keys.ingest), json=[
        event("created", sandbox="sbx_acme_build_0001", execution="exe_acme_1", team=team,
              time=iso(begin), vcpu=8, memory_mib=16384),
        event("killed", sandbox="sbx_acme_build_0001", execution="exe_acme_1", team=team,
              time=iso(begin + timedelta(minutes=50)), reason="request"),
    ])
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
    make_invoice(sessions, team, "2026-10", number="INV-2026-000123", invoice_id="inv_acme_1")
    return team


@pytest.mark.parametrize("width", list(WIDTHS))
def test_every_page_holds_at_the_width(
    width: str, browser: Any, live_server: LiveServer, client: TestClient, api_keys: Keys,
    sessions: sessionmaker[Session],
) -> None:
    data: Fixture = seed(client, api_keys, sessions)
    acme = enterprise_team(client, api_keys, sessions)
    # A few more minutes of samples for the running sandbox: lines, not dots.
    now = datetime.now(UTC)
    samples = [event("host_stats", sandbox=data.running_sandbox, execution="exe_r1",
                     team=data.team, time=iso(now - timedelta(seconds=30 + 20 * i)),
                     cpu_pct=35 + (i * 7) % 40, memory_used_mib=900 + 25 * i)
               for i in range(14)]
    r = client.post("/v1/events", json=samples, headers=Keys.auth(api_keys.ingest))
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
    w, h = WIDTHS[width]
    context = browser.new_context(viewport={"width": w, "height": h}, device_scale_factor=1,
                                  is_mobile=width == "phone", has_touch=width == "phone")
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    base = live_server.url
    team_base = f"{base}/dashboard/teams/{data.team}"
    try:
        pg.goto(f"{base}/")  # the service's address leads to the dashboard
        pg.wait_for_url(re.compile(r"/dashboard/sign-in"))
        check(pg, "sign-in")
        shot(pg, f"sign-in-{w}")

        sign_in(pg, base, data.key)
        check(pg, "overview", amounts="#running-table td.amount")
        shot(pg, f"overview-{w}")

        pg.goto(f"{team_base}/executions")
        check(pg, "executions", amounts="table.data td.amount")

        # A running sandbox with samples: use against allocation, labels once each.
        pg.goto(f"{team_base}/sandboxes/{data.running_sandbox}")
        check(pg, "sandbox", amounts="#sandbox-executions td.amount")
        for kind in ("cpu", "mem"):
            chart = pg.locator(f'[data-chart="metrics"][data-kind="{kind}"]')
            alloc = chart.locator("path.line.alloc")
            assert alloc.count() == 1, kind
            assert "L" in (alloc.get_attribute("d") or ""), f"{kind}: allocated line not drawn"
            labels = (chart.get_attribute("data-labels") or "").split("|")
            assert len(labels) >= 2 and len(labels) == len(set(labels)), labels
            texts = chart.locator(".axis text").evaluate_all("els => els.map(e => e.textContent)")
            axis = [t for t in texts if ":" in t]
            assert len(axis) == len(set(axis)), axis
        pg.evaluate("window.scrollTo(0, document.getElementById('metrics-h').offsetTop - 8)")
        shot(pg, f"sandbox-{w}")

        # An ended sandbox without samples: one clear state instead of two empty charts.
        pg.goto(f"{team_base}/sandboxes/{data.ended_sandbox}")
        check(pg, "ended sandbox")
        assert pg.locator("#metrics-charts").is_hidden()
        assert pg.locator("#metrics-empty").is_visible()
        assert pg.locator(".empty-state").count() == 1

        pg.goto(f"{team_base}/invoices")
        check(pg, "invoices", amounts="#invoices-table td.amount")
        shot(pg, f"invoices-{w}")
        pg.goto(f"{team_base}/invoices/{data.invoice_id}")
        check(pg, "invoice", amounts="#invoice-lines tbody td:last-child")

        # Finance: the team list, the month so far, and Stripe's state said plainly.
        pg.context.clear_cookies()
        sign_in(pg, base, api_keys.finance)
        pg.wait_for_url(re.compile(r"/dashboard/finance"))
        check(pg, "finance", amounts="#team-list td.num")
        assert pg.locator("#stripe-off").is_visible()
        rows = pg.locator("#team-list tbody tr")
        assert rows.count() == 3
        # Sorted by month-to-date usage: the Enterprise team used most.
        assert "Acme Corporation" in rows.first.inner_text()
        shot(pg, f"finance-{w}")
        pg.goto(f"{base}/dashboard/finance?period=2026-10")
        check(pg, "finance invoices", amounts="#finance-invoices td.amount")
        assert "waiting for the next sync" not in pg.locator("main").inner_text()

        # Enterprise: progress against the commitment, not an empty credit card.
        pg.goto(f"{base}/dashboard/teams/{acme}")
        check(pg, "enterprise overview")
        assert pg.locator("#commitment-progress").is_visible()
        assert "minimum used this month" in pg.locator("main").inner_text()
        assert pg.get_by_text("Credit remaining").count() == 0
        shot(pg, f"enterprise-{w}")
    finally:
        context.close()
    assert not errors, errors
