"""The whole money path over HTTP: events for teams on all three plans -> month close ->
invoices with the right lines -> Stripe sync (the double holds one customer and one finalized
invoice per team, items summing to our total) -> close and sync again change nothing -> a
failed payment past the dunning window blocks the team; a later payment unblocks it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.app import create_app
from billing.stripe_sync.gateway import StripeGateway
from billing.stripe_sync.jobs import enforce_dunning, sync_invoices
from metering.auth import service as keys
from metering.config import Settings
from metering.db import transaction
from tests.conftest import Keys, event
from tests.stripe_double import StripeDouble


@pytest.fixture(scope="module")
def double() -> Iterator[StripeDouble]:
    with StripeDouble(port=0, seed=5) as d:
        yield d


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_events_to_invoices_to_stripe_and_dunning(
    database_url: str, engine: Engine, sessions: sessionmaker[Session], double: StripeDouble
) -> None:
    double.reset()
    settings = Settings(database_url=None, run_scheduler=False, stripe_api_key=double.api_key,
                        stripe_api_base=double.url, stripe_webhook_secret=double.webhook_secret)
    app = create_app(settings, database_url=database_url, migrate_on_start=False)
    with transaction(sessions) as session:
        finance = Keys.auth(keys.create_key(session, "finance").key)
        ingest = Keys.auth(keys.create_key(session, "ingest").key)
    client = TestClient(app)
    plans = {"team_hobby": "hobby", "team_pro": "pro", "team_ent": "enterprise"}
    for team, plan in plans.items():
        r = client.put(f"/v1/teams/{team}", json={"name": team, "email": f"{team}@example.com",
                                                  "plan": plan, "effective_at": "2026-09-01T00:00:00Z"},
                       headers=finance)
        assert r.status_code == 200, r.text
    # October: each team runs 2 vCPU / 2048 MiB for 10 hours (5 sandboxes x 2 h).
    start = datetime(2026, 10, 10, 8, tzinfo=UTC)
    batch = []
    for team in plans:
        for i in range(5):
            sandbox = f"{team}_s{i}"
            begin = start + timedelta(hours=3 * i)
            batch.append(event("created", team=team, sandbox=sandbox, execution=f"{sandbox}_e",
                               time=iso(begin), vcpu=2, memory_mib=2048))
            batch.append(event("killed", team=team, sandbox=sandbox, execution=f"{sandbox}_e",
                               time=iso(begin + timedelta(hours=2)), reason="request"))
    r = client.post("/v1/events", json=batch, headers=ingest)
    assert r.json()["accepted"] == 30

    close = client.post("/v1/invoices/close", json={"period": "2026-10"}, headers=finance)
    assert close.status_code == 200, close.text
    assert close.json()["invoices_made"] == 3
    invoices = {}
    for team in plans:
        data = client.get(f"/v1/teams/{team}/invoices", headers=finance).json()["data"]
        assert len(data) == 1
        invoices[team] = client.get(f"/v1/invoices/{data[0]['id']}", headers=finance).json()
    # Usage per team: 72,000 vCPU-s x 0.000014 = 1.008 -> 1.01; 72,000 GiB-s x 0.0000045 = 0.324 -> 0.32.
    for team, invoice in invoices.items():
        usage = {line["kind"]: line["amount"] for line in invoice["lines"]}
        assert usage["usage_vcpu"] == "1.01" and usage["usage_memory"] == "0.32", (team, invoice["lines"])
        assert invoice["status"] == "finalized" and invoice["number"].startswith("INV-2026-")
        assert Decimal(invoice["total"]) == sum(Decimal(line["amount"]) for line in invoice["lines"])
    assert invoices["team_hobby"]["total"] == "0.00"  # paid by the $100 credit
    assert invoices["team_pro"]["total"] == "151.33"  # $150 fee + usage
    assert invoices["team_ent"]["total"] == "3000.00"  # minimum commitment true-up

    # Stripe: card declined for everyone, so the payments fail.
    double.set_payment_outcome("decline")
    gateway = StripeGateway(double.api_key, api_base=double.url, timeout_s=5.0)
    report = sync_invoices(sessions, gateway, settings, workers=1)
    assert report.failed == {} and len(report.synced) == 2 and len(report.skipped) == 1
    customers = double.customers()
    assert sorted(c["metadata"]["team_id"] for c in customers) == ["team_ent", "team_pro"]
    for team in ("team_pro", "team_ent"):
        (customer,) = [c for c in customers if c["metadata"]["team_id"] == team]
        (stripe_invoice,) = double.invoices(customer=customer["id"])
        assert stripe_invoice["status"] != "draft"
        items = double.invoice_items(invoice=stripe_invoice["id"])
        ours = Decimal(invoices[team]["total"])
        assert Decimal(sum(i["amount"] for i in items)) / 100 == ours
        assert Decimal(stripe_invoice["total"]) / 100 == ours
    states = {t: client.get(f"/v1/invoices/{invoices[t]['id']}", headers=finance).json()["status"] for t in plans}
    assert states["team_pro"] == "payment_failed" and states["team_ent"] == "payment_failed"
    assert states["team_hobby"] == "synced"  # zero total: recorded, never sent

    # Close and sync again: nothing new anywhere.
    requests_before = len(double.requests())
    again = client.post("/v1/invoices/close", json={"period": "2026-10"}, headers=finance).json()
    assert again["invoices_made"] == 0 and again["already_existed"] == 3
    sync_invoices(sessions, gateway, settings, workers=1)
    assert len(double.customers()) == 2
    mutating = [r for r in double.requests()[requests_before:] if r["method"] == "POST"]
    assert mutating == []

    # A signed invoice.payment_failed arrives; past the dunning window the team is blocked.
    pro_stripe = client.get(f"/v1/invoices/{invoices['team_pro']['id']}", headers=finance).json()["stripe"]["invoice_id"]
    signed = double.build_signed_event("invoice.payment_failed", invoice_id=pro_stripe)
    r = client.post("/v1/stripe/webhook", content=signed.payload,
                    headers={"Stripe-Signature": signed.signature, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    later = datetime.now(UTC) + timedelta(days=8)
    blocked = enforce_dunning(sessions, 7, now=later)
    assert sorted(blocked) == ["team_ent", "team_pro"]
    admission = client.post("/v1/admissions", json={"team_id": "team_pro", "sandbox_id": "after",
                                                    "vcpu": 1, "memory_mib": 512}, headers=ingest)
    assert admission.status_code == 402 and admission.json()["reason"] == "team_blocked"
    assert client.get("/v1/teams/team_pro", headers=finance).json()["blocked"] is True

    # The customer pays: the signed invoice.paid unblocks the team.
    double.set_payment_outcome("succeed")
    double.pay_invoice(pro_stripe, deliver=False)
    paid = double.build_signed_event("invoice.paid", invoice_id=pro_stripe)
    r = client.post("/v1/stripe/webhook", content=paid.payload,
                    headers={"Stripe-Signature": paid.signature, "Content-Type": "application/json"})
    assert r.status_code == 200
    assert client.get(f"/v1/invoices/{invoices['team_pro']['id']}", headers=finance).json()["status"] == "paid"
    assert client.get("/v1/teams/team_pro", headers=finance).json()["blocked"] is False
    # A forged webhook is refused.
    forged = client.post("/v1/stripe/webhook", content=paid.payload,
                         headers={"Stripe-Signature": "t=1,v1=deadbeef", "Content-Type": "application/json"})
    assert forged.status_code == 400
