"""`metering retention run [--dry-run]`: drop sample months past retention by hand."""

from __future__ import annotations

import argparse
from typing import Any

from billing.retention.service import run_retention
from metering import migrate
from metering.config import get_settings
from metering.console import examples
from metering.db import make_engine, make_sessionmaker, resolve_database_url


def cmd_retention_run(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    migrate.upgrade(engine)
    summary = run_retention(make_sessionmaker(engine), settings, dry_run=args.dry_run)
    if summary.skipped:
        print(f"skipped: {summary.skipped}")
        return 0
    what = "would drop" if summary.dry_run else "dropped"
    print(f"sample retention{' (dry run)' if summary.dry_run else ''}: current month and "
          f"{summary.retention_months} before it kept; horizon {summary.kept_from_before or '-'}"
          f" -> {summary.kept_from or '-'}")
    for verdict in summary.verdicts:
        action = what if verdict.drop else "keep"
        print(f"  {verdict.period}  {action:10} {verdict.bytes / 1e6:10.1f} MB  {verdict.reason}")
    print(f"{what} {len(summary.dropped)} month(s), {summary.bytes_freed / 1e6:.1f} MB")
    return 0


def add_retention_commands(sub: Any) -> None:
    """Add `retention run [--dry-run]` to the `metering` parser."""
    retention_p = sub.add_parser("retention", help="drop per-minute samples past retention",
                                 epilog=examples("metering retention run --dry-run"))
    retention_sub = retention_p.add_subparsers(dest="retention_command", required=True,
                                               metavar="COMMAND")
    retention_run = retention_sub.add_parser(
        "run", help="drop sample months older than METERING_SAMPLE_RETENTION_MONTHS that are "
                    "closed and invoiced",
        epilog=examples("metering retention run --dry-run   # what would go, and why the "
                        "rest stays", "metering retention run"))
    retention_run.add_argument("--dry-run", action="store_true",
                               help="say what would be dropped and why the rest is kept")
    retention_run.set_defaults(func=cmd_retention_run)
