"""Invoice sync against the Stripe test double, a real HTTP server spoken to by the real SDK.

What must hold: one customer per team and one Stripe invoice (per 250 lines) per invoice, its
items summing to our total to the cent; a second run changes nothing; lost responses, 5xx,
429s and timeouts at random end, after enough runs, with every invoice in Stripe exactly once.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts.models import TeamBillingSettings
from billing.invoices.models import Invoice, InvoiceLine
from billing.stripe_sync import planning
from billing.stripe_sync.gateway import StripeGateway
from billing.stripe_sync.models import StripeCustomer, StripeInvoice
from billing.stripe_sync.planning import Backoff, LineToSend, PlanError
from billing.stripe_sync.service import InvoiceSync, SyncPolicy
from metering.db import transaction
from metering.teams.models import Team
from tests.stripe_double import StripeDouble

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)

# Fast retries for tests: the waits are the double's, not production's.
FAST = SyncPolicy(call_attempts=2, call_backoff_s=0.01, max_inline_wait_s=0.5,
                  backoff=Backoff(max_attempts=1000))


# ---- factories (also used by the webhook tests and the benchmark) -------------------------


def make_team(sessions: sessionmaker[Session], team_id: str, *,
              collection_method: str = "charge_automatically") -> str:
    with transaction(sessions) as session:
        session.add(Team(id=team_id, name=f"Team {team_id}", email=f"{team_id}@example.com"))
        session.flush()
        session.add(TeamBillingSettings(team_id=team_id, collection_method=collection_method))
    return team_id


def make_invoice(sessions: sessionmaker[Session], team_id: str, amounts: Sequence[str],
                 *, period: str = "2026-11", currency: str = "usd",
                 invoice_id: str | None = None) -> str:
    """A finalized invoice whose lines have these amounts (negative ones are credits)."""
    invoice_id = invoice_id or "inv_" + secrets.token_hex(8)
    values = [Decimal(a) for a in amounts]
    charges = sum((v for v in values if v >= 0), Decimal(0))
    credits = -sum((v for v in values if v < 0), Decimal(0))
    with transaction(sessions) as session:
        session.add(Invoice(
            id=invoice_id, team_id=team_id, period=period, kind="period",
            number=f"N-{invoice_id[-10:]}", status="finalized", currency=currency,
            subtotal=charges, credits_applied=credits, total=charges - credits,
            finalized_at=NOW))
        session.flush()
        for position, amount in enumerate(values, start=1):
            kind = "credit" if amount < 0 else "usage_vcpu"
            session.add(InvoiceLine(
                invoice_id=invoice_id, position=position, kind=kind,
                description=f"{kind} line {position}", quantity=Decimal(1),
                unit_price=amount, amount=amount))
    return invoice_id


def invoice(sessions: sessionmaker[Session], invoice_id: str) -> Invoice:
    with transaction(sessions) as session:
        row = session.get(Invoice, invoice_id)
        assert row is not None
        return row


def stripe_invoices_of(double: StripeDouble, invoice_id: str) -> list[dict[str, Any]]:
    return [i for i in double.invoices() if i["metadata"].get("invoice_id") == invoice_id]


def outbox(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(text(
            "SELECT type, key FROM outbox_messages ORDER BY seq"))]


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def double() -> Iterator[StripeDouble]:
    with StripeDouble(port=0, seed=7) as d:
        yield d


@pytest.fixture(autouse=True)
def _fresh_double(double: StripeDouble) -> Iterator[None]:
    double.reset()
    double.set_payment_outcome("succeed")
    yield
    double.reset()


@pytest.fixture
def gateway(double: StripeDouble) -> StripeGateway:
    return StripeGateway(double.api_key, api_base=double.url, timeout_s=5.0)


@pytest.fixture
def sync(engine: Engine, sessions: sessionmaker[Session], gateway: StripeGateway) -> InvoiceSync:
    return InvoiceSync(sessions, gateway, policy=FAST)


# ---- the happy path ------------------------------------------------------------------------


def test_one_customer_per_team_and_items_sum_to_the_cent(
        sync: InvoiceSync, sessions: sessionmaker[Session], double: StripeDouble,
        engine: Engine) -> None:
    make_team(sessions, "team_a")
    make_team(sessions, "team_b", collection_method="send_invoice")
    october = make_invoice(sessions, "team_a", ["150.00", "1.37", "0.01"], period="2026-10")
    november = make_invoice(sessions, "team_a", ["150.00", "12.35", "-100.00"])
    sent = make_invoice(sessions, "team_b", ["3000.00", "0.99", "-0.99", "17.03"])

    report = sync.sync_due(now=NOW)

    assert sorted(report.synced) == sorted([october, november, sent]) and not report.failed
    customers = double.customers()
    assert sorted(c["metadata"]["team_id"] for c in customers) == ["team_a", "team_b"]
    by_team = {c["metadata"]["team_id"]: c for c in customers}
    assert by_team["team_b"]["email"] == "team_b@example.com"
    assert by_team["team_b"]["name"] == "Team team_b"
    for invoice_id, cents, method in ((october, 15138, "charge_automatically"),
                                      (november, 6235, "charge_automatically"),
                                      (sent, 301703, "send_invoice")):
        ours = invoice(sessions, invoice_id)
        [remote] = stripe_invoices_of(double, invoice_id)
        items = double.invoice_items(invoice=remote["id"])
        assert remote["total"] == cents == sum(i["amount"] for i in items)
        assert remote["collection_method"] == method
        assert remote["metadata"]["team_id"] == ours.team_id
        assert remote["metadata"]["invoice_number"] == ours.number
        assert remote["metadata"]["period"] == ours.period
        assert remote["auto_advance"] is False
        assert ours.stripe_invoice_id == remote["id"] and ours.sync_error is None
        assert ours.synced_at == NOW
        assert len(items) == len({i["metadata"]["line_position"] for i in items})
    # Charged automatically: paid by the pay call. Sent: open until the customer pays.
    assert invoice(sessions, october).status == "paid"
    assert invoice(sessions, sent).status == "synced"
    assert invoice(sessions, sent).stripe_status == "open"
    [remote_sent] = stripe_invoices_of(double, sent)
    assert remote_sent["due_date"] is not None
    assert [e["type"] for e in double.events(type="invoice.sent")] == ["invoice.sent"]
    # Credits are negative items.
    assert sorted(i["amount"] for i in double.invoice_items(invoice=remote_sent["id"])) == [
        -99, 99, 1703, 300000]
    assert sorted(outbox(engine)) == sorted([
        ("invoice.paid", f"invoice.paid:{october}"),
        ("invoice.paid", f"invoice.paid:{november}")])


def test_items_say_what_the_invoice_says_with_their_service_period_and_ids_as_metadata(
        sync: InvoiceSync, sessions: sessionmaker[Session], double: StripeDouble) -> None:
    make_team(sessions, "team_words")
    invoice_id = "inv_" + secrets.token_hex(8)
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    with transaction(sessions) as session:
        session.add(Invoice(
            id=invoice_id, team_id="team_words", period="2026-11", kind="period",
            number="INV-2026-009999", status="finalized", currency="usd",
            subtotal=Decimal("49.02"), credits_applied=Decimal(0), total=Decimal("49.02"),
            finalized_at=NOW))
        session.flush()
        session.add(InvoiceLine(
            invoice_id=invoice_id, position=1, kind="usage_vcpu",
            description="vCPU time · 3,501,691.364 vCPU-s \u00d7 $0.000014",
            quantity=Decimal("3501691.364"), unit_price=Decimal("0.000014"),
            amount=Decimal("49.02"), price_version_id="pv_pro_1", plan_code="pro",
            details={"plan_version_id": "pv_pro_1"}, service_start=start, service_end=end))

    assert invoice_id in sync.sync_due(now=NOW).synced
    [remote] = stripe_invoices_of(double, invoice_id)
    [item] = double.invoice_items(invoice=remote["id"])
    assert item["description"] == "vCPU time · 3,501,691.364 vCPU-s \u00d7 $0.000014"
    assert item["period"] == {"start": int(start.timestamp()), "end": int(end.timestamp()) - 1}
    assert (item["metadata"]["plan_version_id"], item["metadata"]["price_version_id"]) == (
        "pv_pro_1", "pv_pro_1")
    assert item["metadata"]["line_position"] == "1"


def test_every_mutating_call_has_a_deterministic_key(
        sync: InvoiceSync, sessions: sessionmaker[Session], double: StripeDouble) -> None:
    make_team(sessions, "team_k")
    invoice_id = make_invoice(sessions, "team_k", ["1.00", "2.00"], invoice_id="inv_keys")
    sync.sync_due(now=NOW)
    posts = double.requests(method="POST")
    assert [r.idempotency_key for r in posts] == [
        "customer:team_k", f"inv:{invoice_id}:create", f"inv:{invoice_id}:item:1",
        f"inv:{invoice_id}:item:2", f"inv:{invoice_id}:finalize", f"inv:{invoice_id}:pay"]


def test_a_second_run_changes_nothing(sync: InvoiceSync, sessions: sessionmaker[Session],
                                      double: StripeDouble) -> None:
    make_team(sessions, "team_a")
    make_team(sessions, "team_b", collection_method="send_invoice")
    ids = [make_invoice(sessions, "team_a", ["10.00", "0.50"]),
           make_invoice(sessions, "team_b", ["7.77"])]
    sync.sync_due(now=NOW)
    before = len(double.requests())
    state = (len(double.customers()), len(double.invoices()), len(double.invoice_items()))

    again = sync.sync_due(now=NOW + timedelta(days=30))
    for invoice_id in ids:  # an explicit retry of a synced invoice does nothing either
        assert not sync.sync_invoice(invoice_id).synced

    assert not again.synced and not again.failed
    assert len(double.requests()) == before
    assert (len(double.customers()), len(double.invoices()), len(double.invoice_items())) \
        == state == (2, 2, 3)


def test_existing_customer_is_found_by_metadata_not_duplicated(
        sync: InvoiceSync, sessions: sessionmaker[Session], double: StripeDouble,
        gateway: StripeGateway) -> None:
    made_by_hand = gateway.create_customer(team_id="team_old", email=None, name=None,
                                           idempotency_key="by-hand")
    make_team(sessions, "team_old")
    make_invoice(sessions, "team_old", ["5.00"])
    sync.sync_due(now=NOW)
    assert [c["id"] for c in double.customers()] == [made_by_hand.id]
    with transaction(sessions) as session:
        mapping = session.get(StripeCustomer, "team_old")
        assert mapping is not None and mapping.stripe_customer_id == made_by_hand.id


def test_zero_total_is_not_sent(sync: InvoiceSync, sessions: sessionmaker[Session],
                                double: StripeDouble) -> None:
    make_team(sessions, "team_z")
    zero = make_invoice(sessions, "team_z", ["25.00", "-25.00"])
    report = sync.sync_due(now=NOW)
    assert report.skipped == [zero] and not report.synced
    assert double.requests() == []
    row = invoice(sessions, zero)
    assert (row.status, row.stripe_status, row.stripe_invoice_id) == (
        "synced", "skipped_zero_total", None)
    assert row.synced_at == NOW


def test_more_than_250_lines_are_split_with_no_negative_part(
        sync: InvoiceSync, sessions: sessionmaker[Session], double: StripeDouble) -> None:
    make_team(sessions, "team_big")
    # 270 usage lines then 30 credits at the end: cut in position order, the last part
    # (lines 251-300) would be mostly credits and negative.
    amounts = [f"{(i % 7) + 1}.{i % 100:02d}" for i in range(270)] + ["-30.00"] * 30
    invoice_id = make_invoice(sessions, "team_big", amounts)
    ours = invoice(sessions, invoice_id)
    assert ours.total > 0

    assert sync.sync_due(now=NOW).synced == [invoice_id]

    remote = sorted(stripe_invoices_of(double, invoice_id),
                    key=lambda i: int(i["metadata"]["part"]))
    assert [(r["metadata"]["part"], r["metadata"]["parts"]) for r in remote] == [
        ("0", "2"), ("1", "2")]
    items = [double.invoice_items(invoice=r["id"]) for r in remote]
    assert [len(i) for i in items] == [150, 150]
    positions = sorted(int(i["metadata"]["line_position"]) for part in items for i in part)
    assert positions == list(range(1, 301))
    assert all(r["total"] >= 0 and r["status"] == "paid" for r in remote)
    assert sum(r["total"] for r in remote) == int(ours.total * 100)
    after = invoice(sessions, invoice_id)
    assert after.status == "paid" and after.stripe_invoice_id == remote[0]["id"]
    with transaction(sessions) as session:
        parts = session.execute(select(StripeInvoice).order_by(StripeInvoice.part)).scalars()
        assert [(p.part, p.item_count, p.stripe_invoice_id) for p in parts] == [
            (i, 150, r["id"]) for i, r in enumerate(remote)]


# ---- payments ------------------------------------------------------------------------------


def test_card_decline_is_synced_and_marked_payment_failed(
        sync: InvoiceSync, sessions: sessionmaker[Session], double: StripeDouble,
        engine: Engine) -> None:
    double.set_payment_outcome("decline")
    make_team(sessions, "team_d")
    invoice_id = make_invoice(sessions, "team_d", ["42.00"])
    report = sync.sync_due(now=NOW)
    assert report.synced == [invoice_id]
    row = invoice(sessions, invoice_id)
    assert (row.status, row.stripe_status, row.sync_error) == ("payment_failed", "open", None)
    assert row.payment_failed_at == NOW and row.synced_at == NOW
    [remote] = stripe_invoices_of(double, invoice_id)
    assert remote["status"] == "open" and remote["attempt_count"] == 1
    assert outbox(engine) == [("invoice.payment_failed", f"invoice.payment_failed:{invoice_id}")]


# ---- failures ------------------------------------------------------------------------------


def test_failure_is_visible_and_retried_with_backoff(
        sync: InvoiceSync, sessions: sessionmaker[Session], double: StripeDouble) -> None:
    make_team(sessions, "team_f")
    invoice_id = make_invoice(sessions, "team_f", ["9.99"])
    double.fail_next(2, "api_error", path="/v1/invoices", method="POST")
    report = sync.sync_due(now=NOW)
    assert invoice_id in report.failed
    row = invoice(sessions, invoice_id)
    assert row.status == "sync_failed" and "APIError (500)" in (row.sync_error or "")
    assert row.sync_attempts == 1 and row.next_sync_at == NOW + timedelta(seconds=30)
    # Not due before its time; then it completes and the error is cleared.
    assert not sync.sync_due(now=NOW + timedelta(seconds=29)).synced
    assert sync.sync_due(now=NOW + timedelta(seconds=30)).synced == [invoice_id]
    row = invoice(sessions, invoice_id)
    assert (row.status, row.sync_error, row.next_sync_at, row.sync_attempts) == (
        "paid", None, None, 2)
    assert len(stripe_invoices_of(double, invoice_id)) == 1


def test_rate_limit_retry_after_is_respected(
        sync: InvoiceSync, sessions: sessionmaker[Session], double: StripeDouble) -> None:
    make_team(sessions, "team_r")
    invoice_id = make_invoice(sessions, "team_r", ["1.00"])
    # Longer than the policy waits inline: the invoice is deferred until Retry-After passed.
    double.fail_next(1, "rate_limit", retry_after=120, path="/v1/invoices", method="POST")
    sync.sync_due(now=NOW)
    row = invoice(sessions, invoice_id)
    assert row.status == "sync_failed" and "RateLimitError (429" in (row.sync_error or "")
    assert row.next_sync_at == NOW + timedelta(seconds=120)
    # A short one is waited for within the run.
    double.fail_next(1, "rate_limit", retry_after=0, path="/v1/invoiceitems")
    assert sync.sync_due(now=NOW + timedelta(seconds=120)).synced == [invoice_id]


def test_errors_no_retry_can_fix_stop_the_schedule(
        engine: Engine, sessions: sessionmaker[Session], double: StripeDouble) -> None:
    make_team(sessions, "team_p")
    invoice_id = make_invoice(sessions, "team_p", ["1.00"])
    wrong_key = StripeGateway("not_a_stripe_key", api_base=double.url, timeout_s=5.0)
    report = InvoiceSync(sessions, wrong_key, policy=FAST).sync_due(now=NOW)
    assert invoice_id in report.failed
    row = invoice(sessions, invoice_id)
    assert row.status == "sync_failed" and row.next_sync_at is None
    assert "AuthenticationError (401)" in (row.sync_error or "")
    assert "not_a_stripe_key" not in (row.sync_error or "")  # Stripe masks it; so do we
    # Only an explicit retry picks it up again.
    right = InvoiceSync(sessions, StripeGateway(double.api_key, api_base=double.url),
                        policy=FAST)
    assert not right.sync_due(now=NOW + timedelta(days=365)).synced
    assert right.sync_invoice(invoice_id, now=NOW).synced == [invoice_id]


def test_retries_stop_after_max_attempts(engine: Engine, sessions: sessionmaker[Session],
                                         double: StripeDouble, gateway: StripeGateway) -> None:
    make_team(sessions, "team_m")
    invoice_id = make_invoice(sessions, "team_m", ["1.00"])
    double.fail_randomly(1.0, "api_error", path="/v1/customers*")
    policy = SyncPolicy(call_attempts=1, backoff=Backoff(max_attempts=3))
    sync = InvoiceSync(sessions, gateway, policy=policy)
    moment = NOW
    for attempt, delay in ((1, 30), (2, 60), (3, None)):
        sync.sync_due(now=moment)
        row = invoice(sessions, invoice_id)
        assert row.status == "sync_failed" and row.sync_attempts == attempt
        if delay is None:
            assert row.next_sync_at is None
        else:
            assert row.next_sync_at == moment + timedelta(seconds=delay)
            moment = row.next_sync_at


def test_lost_responses_at_every_step_then_a_day_later_nothing_is_made_twice(
        engine: Engine, sessions: sessionmaker[Session]) -> None:
    """Every mutating call takes effect but its answer is lost; the next attempt comes after
    Stripe forgot the idempotency keys (24 h), so only looking before writing saves us."""
    clock = [NOW.timestamp()]
    with StripeDouble(port=0, seed=3, clock=lambda: clock[0]) as double:
        gateway = StripeGateway(double.api_key, api_base=double.url, timeout_s=5.0)
        sync = InvoiceSync(sessions, gateway,
                           policy=SyncPolicy(call_attempts=1, backoff=Backoff(max_attempts=50)))
        make_team(sessions, "team_l")
        invoice_id = make_invoice(sessions, "team_l", ["1.00", "2.00", "3.00"])
        moment = NOW
        # Customer, invoice, 3 items, finalize, pay: each loses its answer once.
        for run in range(12):
            if run < 7:
                double.fail_next(1, "api_error", method="POST", after=True)
            report = sync.sync_due(now=moment)
            if report.synced:
                break
            clock[0] += 25 * 3600
            moment += timedelta(hours=25)
        else:
            pytest.fail("never synced")
        assert run == 7
        lost = [r for r in double.requests(method="POST") if r.fault]
        assert len(lost) == 7 and len({r.idempotency_key for r in lost}) == 7
        assert len(double.customers()) == 1
        [remote] = stripe_invoices_of(double, invoice_id)
        assert remote["status"] == "paid" and remote["total"] == 600
        assert len(double.invoice_items(invoice=remote["id"])) == 3
        assert invoice(sessions, invoice_id).status == "paid"


def test_a_draft_finalized_by_someone_else_is_not_collected(
        engine: Engine, sessions: sessionmaker[Session], double: StripeDouble,
        gateway: StripeGateway) -> None:
    make_team(sessions, "team_h")
    invoice_id = make_invoice(sessions, "team_h", ["10.00"])
    double.fail_next(1, "disconnect", path="/v1/invoices", method="POST", after=True)
    sync = InvoiceSync(sessions, gateway, policy=SyncPolicy(call_attempts=1))
    assert invoice_id in sync.sync_due(now=NOW).failed
    [remote] = stripe_invoices_of(double, invoice_id)
    double.finalize_invoice(remote["id"], deliver=False)  # empty: paid at 0 on finalization
    report = sync.sync_due(now=NOW + timedelta(minutes=1))
    assert "was finalized with a total of 0 minor units, expected 1000" in report.failed[
        invoice_id]
    row = invoice(sessions, invoice_id)
    assert (row.status, row.next_sync_at) == ("sync_failed", None)
    assert double.requests(path="*/pay") == []


def test_random_faults_end_with_every_invoice_synced_exactly_once(
        engine: Engine, sessions: sessionmaker[Session], double: StripeDouble) -> None:
    teams = [make_team(sessions, f"team_{i}",
                       collection_method="send_invoice" if i % 3 == 0 else
                       "charge_automatically") for i in range(8)]
    expected: dict[str, tuple[int, int]] = {}
    for n, team in enumerate(teams * 2):
        amounts = [f"{n + 1}.{k:02d}" for k in range(3 + n % 3)] + ["-0.50"]
        invoice_id = make_invoice(sessions, team, amounts, period=f"2026-{10 + n // 8}")
        expected[invoice_id] = (len(amounts), sum(int(Decimal(a) * 100) for a in amounts))
    # About 30 % of calls fail: 500s before and after Stripe did the work, 429s, timeouts
    # before and after, dropped connections after.
    double.inject_fault("api_error", probability=0.08)
    double.inject_fault("api_error", probability=0.08, after=True)
    double.inject_fault("rate_limit", probability=0.06, retry_after=0)
    double.inject_fault("timeout", probability=0.04, hang_seconds=0.4)
    double.inject_fault("timeout", probability=0.04, hang_seconds=0.4, after=True)
    double.inject_fault("disconnect", probability=0.03, after=True)
    gateway = StripeGateway(double.api_key, api_base=double.url, timeout_s=0.2)
    sync = InvoiceSync(sessions, gateway, policy=FAST)
    failures = 0
    for run in range(40):
        report = sync.sync_due(now=NOW + timedelta(hours=7 * run), workers=4)
        failures += len(report.failed)
        with transaction(sessions) as session:
            pending = session.execute(select(Invoice.id).where(
                Invoice.status.in_(("finalized", "sync_failed")))).scalars().all()
        if not pending:
            break
    else:
        pytest.fail(f"still unsynced after 40 runs: {pending}")
    faults = Counter(r.fault for r in double.requests() if r.fault)
    double.clear_faults()
    assert failures > 0 and sum(faults.values()) > 20, faults

    assert len(double.customers()) == len(teams)
    assert len({c["metadata"]["team_id"] for c in double.customers()}) == len(teams)
    assert len(double.invoices()) == len(expected)
    for invoice_id, (line_count, cents) in expected.items():
        [remote] = stripe_invoices_of(double, invoice_id)
        items = double.invoice_items(invoice=remote["id"])
        assert len(items) == line_count
        assert remote["total"] == cents == sum(i["amount"] for i in items)
        ours = invoice(sessions, invoice_id)
        assert ours.stripe_invoice_id == remote["id"]
        if remote["collection_method"] == "charge_automatically":
            assert (ours.status, remote["status"]) == ("paid", "paid")
        else:
            assert (ours.status, remote["status"]) == ("synced", "open")
    assert len(double.invoice_items()) == sum(n for n, _ in expected.values())


# ---- the pure planning ---------------------------------------------------------------------


def test_minor_units_are_exact() -> None:
    assert planning.to_minor(Decimal("151.37"), "usd") == 15137
    assert planning.to_minor(Decimal("-0.01"), "USD") == -1
    assert planning.to_minor(Decimal("151.370000"), "usd") == 15137
    assert planning.to_minor(Decimal("1500"), "jpy") == 1500
    with pytest.raises(PlanError):
        planning.to_minor(Decimal("0.005"), "usd")


def test_small_invoices_are_one_part_in_line_order() -> None:
    lines = [LineToSend(p, "usage", "x", a) for p, a in ((2, 5), (1, -3), (3, 0))]
    [part] = planning.plan_parts(lines)
    assert [line.position for line in part.lines] == [1, 2, 3] and part.total_minor == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-5_000, max_value=50_000), min_size=1, max_size=900),
       st.integers(min_value=2, max_value=250))
def test_split_parts_cover_every_line_once_within_the_limit(amounts: list[int],
                                                            max_items: int) -> None:
    lines = [LineToSend(i + 1, "x", "x", a) for i, a in enumerate(amounts)]
    try:
        parts = planning.plan_parts(lines, max_items=max_items)
    except PlanError:
        assert len(lines) > max_items  # only a split can be refused
        return
    assert all(len(p.lines) <= max_items for p in parts)
    assert sorted(line.position for p in parts for line in p.lines) == list(
        range(1, len(lines) + 1))
    assert sum(p.total_minor for p in parts) == sum(amounts)
    assert all(p.count == len(parts) for p in parts)
    if len(parts) > 1:
        assert all(p.total_minor >= 0 for p in parts)
    # Deterministic: the same lines give the same plan in any input order.
    assert planning.plan_parts(list(reversed(lines)), max_items=max_items) == parts


def test_backoff_doubles_caps_and_respects_retry_after() -> None:
    backoff = Backoff(base=timedelta(seconds=30), cap=timedelta(minutes=5), max_attempts=6)
    assert [backoff.next_attempt(NOW, n) for n in (1, 2, 3, 5)] == [
        NOW + timedelta(seconds=s) for s in (30, 60, 120, 300)]
    assert backoff.next_attempt(NOW, 1, retry_after=90) == NOW + timedelta(seconds=90)
    assert backoff.next_attempt(NOW, 6) is None
