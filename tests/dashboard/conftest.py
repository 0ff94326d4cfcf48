"""Dashboard fixtures: the app with the dashboard's routes, an HTTPS test client (the session
cookie is Secure), and a team with usage, running sandboxes and an invoice."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from billing.dashboard.endpoints import router as dashboard_router
from billing.invoices.models import Invoice, InvoiceLine
from metering.core.clock import format_period, month_start
from metering.db import transaction
from tests.conftest import Keys, event


@pytest.fixture(scope="session")
def dashboard_routes(app: FastAPI) -> None:
    """Include the dashboard in the test app until the app itself does (idempotent)."""
    if not any(getattr(r, "path", "").startswith("/dashboard") for r in app.routes):
        app.include_router(dashboard_router)


@pytest.fixture
def web(app: FastAPI, client: TestClient, dashboard_routes: None) -> Iterator[TestClient]:
    """A browser-like client over HTTPS, not following redirects (tests look at them)."""
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as c:
        yield c


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Fixture:
    team: str
    key: str
    other_team: str
    other_key: str
    invoice_id: str
    running_sandbox: str
    ended_sandbox: str


def make_invoice(sessions: sessionmaker[Session], team: str, period: str, *,
                 status: str = "synced", number: str = "INV-2026-000001",
                 invoice_id: str = "inv_dash_1") -> str:
    with transaction(sessions) as session:
        session.add(Invoice(
            id=invoice_id, team_id=team, period=period, kind="period", number=number,
            status=status, currency="usd", subtotal=Decimal("151.37"),
            credits_applied=Decimal("0"), total=Decimal("151.37"),
            finalized_at=datetime.now(UTC), stripe_invoice_id=f"in_{invoice_id}",
            stripe_status="open", sync_attempts=1, synced_at=datetime.now(UTC)))
        session.flush()
        session.add_all([
            InvoiceLine(invoice_id=invoice_id, position=1, kind="plan_fee",
                        description="Pro plan, monthly fee", quantity=Decimal(1),
                        unit_price=Decimal("150"), amount=Decimal("150.00"), plan_code="pro"),
            InvoiceLine(invoice_id=invoice_id, position=2, kind="usage_vcpu",
                        description="vCPU-seconds", quantity=Decimal("97857.142857"),
                        unit_price=Decimal("0.000014"), amount=Decimal("1.37"),
                        plan_code="pro"),
        ])
    return invoice_id


def seed(client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]) -> Fixture:
    """Two Hobby teams; the first has an ended sandbox (2 vCPU for an hour, earlier today or
    yesterday), a running one, samples, and an invoice for last month."""
    team, other = "team_dash", "team_other"
    finance = Keys.auth(api_keys.finance)
    for t in (team, other):
        r = client.put(f"/v1/teams/{t}", json={"name": t.replace("_", " ").title(),
                                                "plan": "hobby"}, headers=finance)
        assert r.status_code == 200, r.text
    now = datetime.now(UTC)
    begin = now - timedelta(hours=3)
    events = [
        event("created", sandbox="sbx_ended_1", execution="exe_e1", team=team,
              time=iso(begin), vcpu=2, memory_mib=1024, template_id="base"),
        event("killed", sandbox="sbx_ended_1", execution="exe_e1", team=team,
              time=iso(begin + timedelta(hours=1)), reason="request"),
        event("created", sandbox="sbx_live_1", execution="exe_r1", team=team,
              time=iso(now - timedelta(minutes=5)), vcpu=4, memory_mib=2048),
        event("created", sandbox="sbx_elsewhere", execution="exe_o1", team=other,
              time=iso(now - timedelta(minutes=30)), vcpu=1, memory_mib=512),
    ]
    for i in range(5):
        moment = now - timedelta(seconds=5 * i + 1)
        events.append(event("host_stats", sandbox="sbx_live_1", execution="exe_r1", team=team,
                            time=iso(moment), cpu_pct=20 + i, memory_used_mib=700 + i))
    r = client.post("/v1/events", json=events, headers=Keys.auth(api_keys.ingest))
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
    last_month = format_period(month_start(now) - timedelta(days=1))
    invoice_id = make_invoice(sessions, team, last_month)
    return Fixture(team, api_keys.team(sessions, team), other, api_keys.team(sessions, other),
                   invoice_id, "sbx_live_1", "sbx_ended_1")


@pytest.fixture
def seeded(client: TestClient, api_keys: Keys, sessions: sessionmaker[Session]) -> Fixture:
    return seed(client, api_keys, sessions)


def sign_in(web: TestClient, key: str) -> None:
    r = web.post("/dashboard/sign-in", data={"key": key})
    assert r.status_code == 303, r.text
