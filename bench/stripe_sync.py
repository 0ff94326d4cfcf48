"""Stripe sync throughput against the Stripe test double (a real local HTTP server).

    .venv/bin/python -m bench.stripe_sync [--invoices 300] [--workers 1,4,8]

Each invoice belongs to its own team (so each also creates a customer) and has 3 to 5 lines,
one of them a credit; charged automatically, so a full sync is: customer search + create,
invoice create, one item per line, finalize, pay (8 to 10 Stripe requests). Every run starts
from the same state: a fresh double and the invoices back to `finalized`. The double answers
in well under a millisecond, so the figures measure our side (SDK, HTTP, PostgreSQL commits);
against real Stripe the request latency (~100-300 ms) and its rate limit (100 requests/s in live
mode, 25 in test mode) dominate, and `workers` is what hides the latency. The double runs in its
own process by default, as Stripe would (`--in-process` to share ours). The CPU figure is this
process's own (SDK, HTTP client, SQLAlchemy), the part that does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.common import ROOT, free_port, fresh_database, machine
from billing.invoices.models import Invoice, InvoiceLine
from billing.stripe_sync import models as _stripe_models  # noqa: F401 - registers the tables
from billing.stripe_sync.gateway import StripeGateway
from billing.stripe_sync.service import InvoiceSync
from metering import migrate
from metering.db import make_engine, make_sessionmaker, transaction
from metering.teams.models import Team
from tests.stripe_double import StripeDouble

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)

RESET = """
TRUNCATE stripe_invoices, stripe_customers, stripe_events, outbox_messages;
UPDATE invoices SET status = 'finalized', stripe_invoice_id = NULL, stripe_status = NULL,
    sync_attempts = 0, sync_error = NULL, next_sync_at = NULL, synced_at = NULL,
    paid_at = NULL, payment_failed_at = NULL;
"""


def seed(sessions: sessionmaker[Session], count: int) -> int:
    """`count` teams with one finalized invoice each; answers the number of lines."""
    lines = 0
    with transaction(sessions) as session:
        for n in range(count):
            team_id = f"team_{n:05d}"
            session.add(Team(id=team_id, name=f"Team {n}", email=f"{team_id}@example.com"))
            session.flush()  # no ORM relationships: the team row must exist first
            amounts = [Decimal(f"{n % 90 + 10}.{k * 7 % 100:02d}") for k in range(2 + n % 3)]
            amounts.append(Decimal("-5.00"))
            invoice_id = "inv_" + secrets.token_hex(8)
            session.add(Invoice(
                id=invoice_id, team_id=team_id, period="2026-11", kind="period",
                number=f"2026-{n:06d}", status="finalized", currency="usd",
                subtotal=sum(a for a in amounts if a > 0), credits_applied=Decimal("5.00"),
                total=sum(amounts), finalized_at=NOW))
            session.flush()
            for position, amount in enumerate(amounts, start=1):
                session.add(InvoiceLine(
                    invoice_id=invoice_id, position=position,
                    kind="credit" if amount < 0 else "usage_vcpu",
                    description=f"line {position}", quantity=Decimal(1), unit_price=amount,
                    amount=amount))
            lines += len(amounts)
    return lines


@contextlib.contextmanager
def _double(in_process: bool) -> Iterator[tuple[str, httpx.Client]]:
    """The double's URL and an HTTP client for its control endpoints (`/_double/...`)."""
    if in_process:
        with StripeDouble(port=0, seed=1) as double, httpx.Client(base_url=double.url) as http:
            yield double.url, http
        return
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.stripe_double.server", "--port",
                                str(port)], stdout=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get("/_double/health").raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield url, http
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invoices", type=int, default=300)
    parser.add_argument("--workers", default="1,4,8",
                        help="comma-separated thread counts to measure")
    parser.add_argument("--in-process", action="store_true",
                        help="run the double in this process (it then shares the GIL)")
    args = parser.parse_args()
    url = fresh_database("metering_bench_stripe")
    engine = make_engine(url, pool_size=12)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    lines = seed(sessions, args.invoices)
    print(f"machine: {machine()}")
    print(f"{args.invoices} invoices, {lines} lines, one team (customer) each; "
          f"the double in {'this process' if args.in_process else 'its own process'}")
    with _double(args.in_process) as (double_url, control):
        gateway = StripeGateway("sk_test_bench", api_base=double_url, timeout_s=10.0)
        for workers in (int(w) for w in args.workers.split(",")):
            with engine.begin() as conn:
                conn.execute(text(RESET))
            control.post("/_double/reset").raise_for_status()
            sync = InvoiceSync(sessions, gateway)
            started, cpu_started = time.perf_counter(), time.process_time()
            report = sync.sync_due(now=NOW, workers=workers)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            assert len(report.synced) == args.invoices and not report.failed, report.failed
            state = control.get("/_double/state").json()
            assert len(state["customers"]) == args.invoices
            assert len(state["invoices"]) == args.invoices
            assert len(state["invoice_items"]) == lines
            requests = sum(control.get("/_double/requests").json()["counts"].values())
            print(f"workers={workers:2d}: {args.invoices / elapsed:7.1f} invoices/s  "
                  f"({elapsed:5.2f} s, {requests} Stripe requests, "
                  f"{requests / elapsed:6.0f} requests/s, "
                  f"{elapsed / args.invoices * 1000:5.1f} ms per invoice, of which "
                  f"{cpu / args.invoices * 1000:4.1f} ms CPU in this process)")
            # A second run finds nothing to do: no Stripe request at all.
            assert not sync.sync_due(now=NOW, workers=workers).synced
            assert sum(control.get("/_double/requests").json()["counts"].values()) == requests
    engine.dispose()


if __name__ == "__main__":
    main()
