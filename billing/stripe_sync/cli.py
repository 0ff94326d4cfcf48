"""`metering stripe ...`: sync invoices now, retry pending webhook events, run dunning.

Wired into the `metering` command by `add_stripe_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from billing.stripe_sync.gateway import StripeGateway, StripeNotConfigured
from billing.stripe_sync.jobs import enforce_dunning, retry_stripe_events
from billing.stripe_sync.service import InvoiceSync, SyncReport
from metering import migrate
from metering.config import get_settings
from metering.console import examples, positive_int
from metering.db import make_engine, make_sessionmaker, resolve_database_url
from metering.errors import MeteringError


class StripeCommandError(MeteringError):
    code = "stripe_not_configured"


def _sessions(pool_size: int) -> sessionmaker[Session]:
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=pool_size)
    migrate.upgrade(engine)
    return make_sessionmaker(engine)


def _gateway() -> StripeGateway:
    try:
        return StripeGateway.from_settings(get_settings())
    except StripeNotConfigured as exc:
        raise StripeCommandError(str(exc)) from exc


def print_report(report: SyncReport) -> None:
    for invoice_id in report.synced:
        print(f"synced   {invoice_id}")
    for invoice_id in report.skipped:
        print(f"skipped  {invoice_id}  (zero total: not sent to Stripe)")
    for invoice_id, error in sorted(report.failed.items()):
        print(f"failed   {invoice_id}  {error}")
    print(f"{len(report.synced)} synced, {len(report.skipped)} skipped, "
          f"{len(report.failed)} failed")


def cmd_stripe_sync(args: argparse.Namespace) -> int:
    settings = get_settings()
    gateway = _gateway()
    sync = InvoiceSync(_sessions(max(args.workers, 1) + 1), gateway,
                       dunning_days=settings.dunning_days)
    if args.invoice:
        report = sync.sync_invoice(args.invoice)
        if not (report.synced or report.skipped or report.failed):
            print(f"{args.invoice}: nothing to sync (not finalized or sync_failed, or being "
                  "synced by another worker)")
            return 1
    else:
        report = sync.sync_due(limit=args.limit, workers=args.workers)
    print_report(report)
    return 1 if report.failed else 0


def cmd_stripe_events(_: argparse.Namespace) -> int:
    settings = get_settings()
    counts = retry_stripe_events(_sessions(1), _gateway(), settings)
    print(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or
          "no pending events")
    return 0


def cmd_stripe_dunning(_: argparse.Namespace) -> int:
    blocked = enforce_dunning(_sessions(1), get_settings().dunning_days)
    print(f"blocked {len(blocked)} team(s)" + (f": {', '.join(blocked)}" if blocked else ""))
    return 0


def add_stripe_commands(subparsers: Any) -> None:
    """Add `stripe sync [--invoice ID] [--limit N] [--workers N]`, `stripe events` and
    `stripe dunning` to the `metering` command."""
    stripe_p = subparsers.add_parser(
        "stripe", help="sync invoices to Stripe, webhook events, dunning",
        epilog=examples("metering stripe sync", "metering stripe sync --invoice inv_3f9a1c2b"))
    sub = stripe_p.add_subparsers(dest="stripe_command", required=True, metavar="COMMAND")
    sync = sub.add_parser(
        "sync", help="sync due invoices to Stripe now (or one, any time)",
        description="Send finalized invoices to Stripe now (the worker does it on a schedule). "
                    "Needs METERING_STRIPE_API_KEY.",
        epilog=examples("metering stripe sync", "metering stripe sync --limit 10",
                        "metering stripe sync --invoice inv_3f9a1c2b4d5e6f708192a3b4"))
    sync.add_argument("--invoice", default=None,
                      help="sync this invoice now, even if its retries are exhausted")
    sync.add_argument("--limit", type=positive_int, default=None,
                      help="at most this many invoices; all that are due when left out")
    sync.add_argument("--workers", type=positive_int, default=4, help="invoices synced at once")
    sync.set_defaults(func=cmd_stripe_sync)
    sub.add_parser("events", help="handle webhook events whose handling failed",
                   epilog=examples("metering stripe events")).set_defaults(
        func=cmd_stripe_events)
    sub.add_parser("dunning", help="block teams with invoices unpaid past the dunning window",
                   epilog=examples("metering stripe dunning")).set_defaults(
        func=cmd_stripe_dunning)
