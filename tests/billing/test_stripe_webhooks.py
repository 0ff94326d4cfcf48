"""`POST /v1/stripe/webhook` and dunning, against the Stripe test double.

Events are signed by the double exactly as Stripe signs them and posted through the app; one
test runs the app as a real server and lets the double deliver (and retry) on its own.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.app import create_app
from billing.stripe_sync.gateway import DraftInvoice, DraftItem, StripeGateway
from billing.stripe_sync.jobs import enforce_dunning, retry_stripe_events
from billing.stripe_sync.models import StripeEvent
from billing.stripe_sync.service import InvoiceSync, SyncPolicy
from metering.config import Settings
from metering.db import transaction
from metering.teams.models import Team
from metering.teams.service import block_team
from tests.billing.test_stripe_sync import (
    FAST,
    NOW,
    invoice,
    make_invoice,
    make_team,
    outbox,
    stripe_invoices_of,
)
from tests.stripe_double import SignedEvent, StripeDouble

WEBHOOK = "/v1/stripe/webhook"


@pytest.fixture(scope="module")
def double() -> Iterator[StripeDouble]:
    with StripeDouble(port=0, seed=11) as d:
        yield d


@pytest.fixture(autouse=True)
def _fresh_double(double: StripeDouble) -> Iterator[None]:
    double.reset()
    yield
    double.configure_webhooks(None)
    double.reset()


@pytest.fixture(scope="module")
def webhook_app(database_url: str, engine: Engine, double: StripeDouble) -> FastAPI:
    settings = Settings(database_url=None, run_scheduler=False, stripe_api_key=double.api_key,
                        stripe_api_base=double.url, stripe_webhook_secret=double.webhook_secret)
    app = create_app(settings, database_url=database_url, migrate_on_start=False)
    return app


@pytest.fixture
def http(webhook_app: FastAPI, engine: Engine) -> Iterator[TestClient]:
    with TestClient(webhook_app) as test_client:
        yield test_client


@pytest.fixture
def gateway(double: StripeDouble) -> StripeGateway:
    return StripeGateway(double.api_key, api_base=double.url, timeout_s=5.0)


def synced(sessions: sessionmaker[Session], gateway: StripeGateway, double: StripeDouble,
           team_id: str = "team_w", method: str = "send_invoice",
           amounts: tuple[str, ...] = ("120.00", "-20.00")) -> tuple[str, str]:
    """A team with one invoice synced to Stripe (open, when sent): (invoice id, Stripe id)."""
    make_team(sessions, team_id, collection_method=method)
    invoice_id = make_invoice(sessions, team_id, list(amounts))
    assert InvoiceSync(sessions, gateway, policy=FAST).sync_due(now=NOW).synced == [invoice_id]
    [remote] = stripe_invoices_of(double, invoice_id)
    return invoice_id, remote["id"]


def post(http: TestClient, signed: SignedEvent) -> dict[str, Any]:
    response = http.post(WEBHOOK, content=signed.payload, headers=signed.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def team(sessions: sessionmaker[Session], team_id: str) -> Team:
    with transaction(sessions) as session:
        row = session.get(Team, team_id)
        assert row is not None
        return row


def stored_events(sessions: sessionmaker[Session]) -> list[StripeEvent]:
    with transaction(sessions) as session:
        return list(session.execute(select(StripeEvent).order_by(StripeEvent.received_at))
                    .scalars())


# ---- signature -----------------------------------------------------------------------------


def test_forged_stale_and_missing_signatures_are_refused(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble) -> None:
    _, stripe_id = synced(sessions, gateway, double)
    event = double.pay_invoice(stripe_id, deliver=False)
    forged = double.sign_event(event, secret="whsec_not_the_secret")
    stale = double.sign_event(event, timestamp=int(time.time()) - 301)
    tampered = double.sign_event(event)
    for payload, headers in ((forged.payload, forged.headers), (stale.payload, stale.headers),
                             (tampered.payload.replace(b"paid", b"void"), tampered.headers),
                             (tampered.payload, {"Content-Type": "application/json"})):
        response = http.post(WEBHOOK, content=payload, headers=headers)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_signature"
        assert "signature" in error["message"].lower()
    assert "Timestamp outside the tolerance zone" in http.post(
        WEBHOOK, content=stale.payload, headers=stale.headers).json()["error"]["message"]
    assert stored_events(sessions) == []
    # Within the tolerance it is accepted (no API key needed).
    recent = double.sign_event(event, timestamp=int(time.time()) - 250)
    assert post(http, recent)["outcome"] == "applied"


def test_a_signature_stamped_in_the_future_is_refused(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble) -> None:
    _, stripe_id = synced(sessions, gateway, double)
    event = double.pay_invoice(stripe_id, deliver=False)
    ahead = double.sign_event(event, timestamp=int(time.time()) + 86_400)
    response = http.post(WEBHOOK, content=ahead.payload, headers=ahead.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert "future" in response.json()["error"]["message"]
    assert stored_events(sessions) == []


# ---- once, in any order --------------------------------------------------------------------


def test_paid_event_marks_paid_and_notifies(http: TestClient, sessions: sessionmaker[Session],
                                            gateway: StripeGateway, double: StripeDouble,
                                            engine: Engine) -> None:
    invoice_id, stripe_id = synced(sessions, gateway, double)
    assert invoice(sessions, invoice_id).status == "synced"
    body = post(http, double.sign_event(double.pay_invoice(stripe_id, deliver=False)))
    assert body["outcome"] == "applied" and body["duplicate"] is False
    row = invoice(sessions, invoice_id)
    assert (row.status, row.stripe_status) == ("paid", "paid") and row.paid_at is not None
    assert outbox(engine) == [("invoice.paid", f"invoice.paid:{invoice_id}")]


def test_an_event_delivered_twice_is_handled_once(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble, engine: Engine) -> None:
    invoice_id, stripe_id = synced(sessions, gateway, double)
    signed = double.sign_event(double.fail_payment(stripe_id, deliver=False))
    first = post(http, signed)
    second = post(http, double.sign_event(signed.event))  # re-signed, like a redelivery
    assert (first["duplicate"], first["outcome"]) == (False, "applied")
    assert (second["duplicate"], second["outcome"]) == (True, "duplicate")
    # Re-fetched from Stripe once; one notification; one inbox row, handled.
    assert len(double.requests(path=f"/v1/invoices/{stripe_id}", method="GET")) == 1
    assert outbox(engine) == [("invoice.payment_failed", f"invoice.payment_failed:{invoice_id}")]
    [stored] = stored_events(sessions)
    assert stored.id == signed.event["id"] and stored.handled_at is not None
    assert stored.outcome == "applied"


def test_paid_before_payment_failed_ends_paid(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble, engine: Engine) -> None:
    invoice_id, stripe_id = synced(sessions, gateway, double)
    failed = double.fail_payment(stripe_id, deliver=False)
    paid = double.pay_invoice(stripe_id, deliver=False)
    assert post(http, double.sign_event(paid))["outcome"] == "applied"
    assert post(http, double.sign_event(failed))["outcome"] == "unchanged"
    row = invoice(sessions, invoice_id)
    assert row.status == "paid" and row.payment_failed_at is None
    assert outbox(engine) == [("invoice.paid", f"invoice.paid:{invoice_id}")]


def test_payment_failed_then_paid_in_order(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble, engine: Engine) -> None:
    invoice_id, stripe_id = synced(sessions, gateway, double)
    failed = double.fail_payment(stripe_id, deliver=False)
    assert post(http, double.sign_event(failed))["outcome"] == "applied"
    row = invoice(sessions, invoice_id)
    assert row.status == "payment_failed"
    assert row.payment_failed_at is not None
    assert int(row.payment_failed_at.timestamp()) == failed["created"]
    assert post(http, double.sign_event(double.pay_invoice(stripe_id, deliver=False)))[
        "outcome"] == "applied"
    assert invoice(sessions, invoice_id).status == "paid"
    assert [t for t, _ in outbox(engine)] == ["invoice.payment_failed", "invoice.paid"]


def test_voided_and_uncollectible(http: TestClient, sessions: sessionmaker[Session],
                                  gateway: StripeGateway, double: StripeDouble) -> None:
    voided_id, voided_stripe = synced(sessions, gateway, double, team_id="team_v")
    lost_id, lost_stripe = synced(sessions, gateway, double, team_id="team_u")
    post(http, double.sign_event(double.void_invoice(voided_stripe, deliver=False)))
    post(http, double.sign_event(double.mark_uncollectible(lost_stripe, deliver=False)))
    voided = invoice(sessions, voided_id)
    assert (voided.status, voided.stripe_status) == ("void", "void")
    assert voided.voided_at is not None
    lost = invoice(sessions, lost_id)
    assert (lost.status, lost.stripe_status) == ("payment_failed", "uncollectible")
    assert lost.payment_failed_at is not None


def test_events_about_other_things_are_ignored(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble) -> None:
    invoice_id, stripe_id = synced(sessions, gateway, double)
    customer = gateway.create_customer(team_id="elsewhere", email=None, name=None,
                                       idempotency_key="not-ours")
    foreign = gateway.create_invoice(DraftInvoice(
        customer=customer.id, currency="usd", collection_method="send_invoice",
        days_until_due=3, description="made by hand", metadata={}), idempotency_key="hand")
    assert post(http, double.build_signed_event("invoice.paid", invoice_id=foreign.id))[
        "outcome"] == "ignored"
    assert post(http, double.build_signed_event("invoice.sent", invoice_id=stripe_id))[
        "outcome"] == "ignored"
    assert invoice(sessions, invoice_id).status == "synced"


def test_an_event_ahead_of_the_sync_waits_and_is_handled_later(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble) -> None:
    make_team(sessions, "team_early", collection_method="send_invoice")
    invoice_id = make_invoice(sessions, "team_early", ["10.00"])
    # Stripe creates the invoice but the answer is lost: we do not know its id yet.
    double.fail_next(1, "disconnect", path="/v1/invoices", method="POST", after=True)
    sync = InvoiceSync(sessions, gateway, policy=SyncPolicy(call_attempts=1))
    assert invoice_id in sync.sync_due(now=NOW).failed
    [remote] = stripe_invoices_of(double, invoice_id)
    # Someone completes it by hand, and the customer pays, before our next attempt.
    gateway.create_item(DraftItem(
        customer=remote["customer"], invoice=remote["id"], amount=1000, currency="usd",
        description="by hand", metadata={"invoice_id": invoice_id, "line_position": "1"}),
        idempotency_key="by-hand")
    assert post(http, double.sign_event(double.pay_invoice(remote["id"], deliver=False)))[
        "outcome"] == "pending"
    [pending] = stored_events(sessions)
    assert pending.handled_at is None and "not recorded yet" in (pending.last_error or "")

    assert sync.sync_due(now=NOW + timedelta(minutes=1)).synced == [invoice_id]
    settings = Settings(database_url=None, dunning_days=7)
    assert retry_stripe_events(sessions, gateway, settings,
                               now=pending.next_attempt_at) == {"unchanged": 1}
    row = invoice(sessions, invoice_id)
    assert row.status == "paid" and row.stripe_invoice_id == remote["id"]
    assert len(stripe_invoices_of(double, invoice_id)) == 1


# ---- dunning -------------------------------------------------------------------------------


def test_unpaid_past_the_dunning_window_blocks_and_a_payment_unblocks(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble, engine: Engine) -> None:
    invoice_id, stripe_id = synced(sessions, gateway, double, team_id="team_late")
    post(http, double.sign_event(double.fail_payment(stripe_id, deliver=False)))
    failed_at = invoice(sessions, invoice_id).payment_failed_at
    assert failed_at is not None
    window = timedelta(days=7)

    assert enforce_dunning(sessions, 7, now=failed_at + window - timedelta(seconds=1)) == []
    assert team(sessions, "team_late").blocked_at is None
    assert enforce_dunning(sessions, 7, now=failed_at + window) == ["team_late"]
    blocked = team(sessions, "team_late")
    assert (blocked.blocked_reason, blocked.blocked_at) == ("unpaid_invoice",
                                                           failed_at + window)
    assert enforce_dunning(sessions, 7, now=failed_at + window * 2) == []  # already blocked

    post(http, double.sign_event(double.pay_invoice(stripe_id, deliver=False)))
    assert invoice(sessions, invoice_id).status == "paid"
    assert team(sessions, "team_late").blocked_at is None
    assert enforce_dunning(sessions, 7, now=failed_at + window * 3) == []


def test_a_payment_keeps_the_block_while_another_invoice_is_overdue(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble, engine: Engine) -> None:
    make_team(sessions, "team_two", collection_method="send_invoice")
    first = make_invoice(sessions, "team_two", ["5.00"], period="2026-10")
    second = make_invoice(sessions, "team_two", ["6.00"], period="2026-11")
    InvoiceSync(sessions, gateway, policy=FAST).sync_due(now=NOW)
    [one], [two] = stripe_invoices_of(double, first), stripe_invoices_of(double, second)
    post(http, double.sign_event(double.fail_payment(one["id"], deliver=False)))
    post(http, double.sign_event(double.fail_payment(two["id"], deliver=False)))
    with engine.begin() as conn:  # both failed eight days ago
        conn.execute(text("UPDATE invoices SET payment_failed_at = now() - interval '8 days'"))
    assert enforce_dunning(sessions, 7) == ["team_two"]
    assert team(sessions, "team_two").blocked_reason == "unpaid_invoice"
    post(http, double.sign_event(double.pay_invoice(one["id"], deliver=False)))
    assert team(sessions, "team_two").blocked_reason == "unpaid_invoice"
    post(http, double.sign_event(double.pay_invoice(two["id"], deliver=False)))
    assert team(sessions, "team_two").blocked_at is None


def test_a_block_for_another_reason_is_not_lifted_by_a_payment(
        http: TestClient, sessions: sessionmaker[Session], gateway: StripeGateway,
        double: StripeDouble) -> None:
    invoice_id, stripe_id = synced(sessions, gateway, double, team_id="team_admin")
    with transaction(sessions) as session:
        block_team(session, "team_admin", "admin", NOW)
    post(http, double.sign_event(double.pay_invoice(stripe_id, deliver=False)))
    assert invoice(sessions, invoice_id).status == "paid"
    assert team(sessions, "team_admin").blocked_reason == "admin"


# ---- end to end: the double delivers -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_double_delivers_signed_webhooks_to_a_running_server(
        webhook_app: FastAPI, engine: Engine, sessions: sessionmaker[Session],
        gateway: StripeGateway, double: StripeDouble) -> None:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(webhook_app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        double.configure_webhooks(f"http://127.0.0.1:{port}{WEBHOOK}")
        charged, _ = synced(sessions, gateway, double, team_id="team_e2e_a",
                                         method="charge_automatically")
        sent, sent_stripe = synced(sessions, gateway, double, team_id="team_e2e_b")
        double.fail_payment(sent_stripe)
        double.redeliver(double.events(type="invoice.payment_failed")[-1]["id"])
        assert double.wait_for_webhooks(15)  # the failure is handled before the payment
        double.pay_invoice(sent_stripe)
        assert double.wait_for_webhooks(15)
    finally:
        double.configure_webhooks(None)
        server.should_exit = True
        thread.join(10)
    assert all(d.status == 200 for d in double.webhook_deliveries())
    assert invoice(sessions, charged).status == "paid"
    assert invoice(sessions, sent).status == "paid"
    events = stored_events(sessions)
    assert len(events) == len({e["id"] for e in double.events()})  # each stored once
    assert all(e.handled_at is not None for e in events)
    with engine.connect() as conn:
        keys = [r[0] for r in conn.execute(text("SELECT key FROM outbox_messages"))]
    assert sorted(keys) == sorted([f"invoice.paid:{charged}", f"invoice.paid:{sent}",
                                   f"invoice.payment_failed:{sent}"])
