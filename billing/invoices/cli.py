"""`metering invoices ...`: close a month, list, show, export and summarize invoices.

Wired into `billing.cli` by `add_invoice_commands(subparsers)`. Each command opens its own
engine from the settings (as the other commands do) and prints for a person at a terminal:
the close shows a progress line per chunk of teams on stderr and a summary at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from sqlalchemy.orm import Session, sessionmaker

from billing.invoices import close as month_close
from billing.invoices import export
from billing.invoices import repository as repo
from billing.invoices.schemas import invoice_out
from metering.config import get_settings
from metering.db import make_engine, make_sessionmaker, resolve_database_url, transaction
from metering.errors import NotFound


def _sessions(pool_size: int = 2) -> sessionmaker[Session]:
    engine = make_engine(resolve_database_url(get_settings()), pool_size=pool_size)
    return make_sessionmaker(engine)


def _printer(out: TextIO) -> month_close.Progress:
    started = time.perf_counter()

    def progress(done: int, total: int, summary: month_close.CloseSummary) -> None:
        elapsed = time.perf_counter() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        print(f"  {done:>7}/{total} teams  {summary.invoices_made} invoices  "
              f"{summary.already_existed} existing  {len(summary.failures)} failed  "
              f"{elapsed:6.1f} s  ({rate:,.0f} teams/s)", file=out, flush=True)

    return progress


def print_summary(summary: month_close.CloseSummary, out: TextIO) -> None:
    what = "would make" if summary.dry_run else "made"
    print(f"close {summary.period}{' (dry run)' if summary.dry_run else ''}: "
          f"{summary.teams_considered} teams considered, {summary.invoices_made} invoices "
          f"{what}, {summary.already_existed} already existed", file=out)
    totals = summary.as_dict()["total_amount"]
    for currency, amount in totals.items():
        print(f"  total {what}: {amount} {currency.upper()}", file=out)
    for reason, count in sorted(summary.skipped.items()):
        print(f"  skipped ({reason}): {count}", file=out)
    for failure in summary.failures:
        print(f"  FAILED {failure.team_id}: {failure.reason}", file=out)
    if summary.run_id:
        print(f"  run {summary.run_id} in {summary.seconds:.1f} s", file=out)


def cmd_close(args: argparse.Namespace) -> int:
    settings = get_settings()
    sessions = _sessions(pool_size=2)
    summary = month_close.close_period(
        sessions, args.period, settings, dry_run=args.dry_run, force=args.force,
        chunk_size=args.chunk_size, progress=_printer(sys.stderr))
    if args.dry_run:
        for p in summary.previews:
            print(f"{p.team_id}\t{p.total} {p.currency.upper()}\t{p.lines} lines")
    print_summary(summary, sys.stdout)
    return 1 if summary.failures else 0


def _row_text(row: Any) -> str:
    body = invoice_out(row, []).model_dump()
    return (f"{body['number'] or '-':16} {body['id']:28} {body['team_id']:24} {body['period']} "
            f"{body['kind']:10} {body['status']:14} {body['total']:>12} "
            f"{body['currency'].upper()}")


def cmd_list(args: argparse.Namespace) -> int:
    with transaction(_sessions(1)) as session:
        after = None
        while True:
            rows = repo.list_invoices(session, team_id=args.team, period=args.period,
                                      status=args.status, limit=500, after=after)
            for row in rows:
                print(_row_text(row))
            if len(rows) < 500:
                break
            after = (rows[-1].created_at, rows[-1].id)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with transaction(_sessions(1)) as session:
        row = repo.get_invoice(session, args.id)
        if row is None:
            raise NotFound(f"no invoice {args.id}")
        body = invoice_out(row, repo.lines_of(session, [row.id]).get(row.id, [])).model_dump()
    print(f"invoice {body['number'] or '(unnumbered)'}  {body['id']}")
    print(f"team {body['team_id']}  period {body['period']}  {body['kind']}  {body['status']}")
    if body["corrects_invoice_id"]:
        print(f"corrects {body['corrects_invoice_id']}")
    for line in body["lines"]:
        print(f"  {line['position']:>3} {line['kind']:20} {line['amount']:>12}  "
              f"{line['description']}")
    currency = body["currency"].upper()
    print(f"  subtotal {body['subtotal']}  credits {body['credits_applied']}  "
          f"total {body['total']} {currency}")
    if body["stripe"]:
        print(f"  stripe {body['stripe']['invoice_id']} ({body['stripe']['status']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with transaction(_sessions(1)) as session:
        text = export.csv_text(session, args.period)
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_revenue(args: argparse.Namespace) -> int:
    with transaction(_sessions(1)) as session:
        months = export.revenue(session, args.period)
    if not months:
        print("no invoices")
    for m in months:
        c = m["currency"].upper()
        print(f"{m['period']} {c}: {m['invoices']} invoices, subtotal {m['subtotal']}, "
              f"credits {m['credits_applied']}, total {m['total']}")
        for p in m["by_plan"]:
            print(f"  {p['plan_code'] or '(no plan)':16} {p['invoices']:>7} invoices  "
                  f"fees {p['plan_fees']:>12}  usage {p['usage']:>12}  "
                  f"true-up {p['commitment_true_up']:>12}  adjustments {p['adjustments']:>10}  "
                  f"= {p['amount']}")
    return 0


def _period(value: str) -> str:
    from metering.core.clock import parse_period

    try:
        parse_period(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-derive the month's invoices from raw events; OK, or each difference and exit 1."""
    from billing.verification import service as verification

    settings = get_settings()
    started = time.perf_counter()
    with transaction(_sessions(2)) as session:
        report = verification.verify_period(session, args.period, settings, team_id=args.team)
    seconds = time.perf_counter() - started
    bad = [c for c in report.checks if not c.ok]
    for check in bad:
        if check.error:
            print(f"{check.team_id} {check.number or check.invoice_id}: cannot re-derive: "
                  f"{check.error}")
        for d in check.differences:
            where = f"line {d.position}" if d.position is not None else "total"
            print(f"{d.team_id} {d.invoice} {where} ({d.line}): stored {d.stored}, "
                  f"recomputed {d.recomputed}")
    verdict = "OK" if not bad else f"{len(bad)} invoice(s) differ"
    print(f"verify {args.period}{' team ' + args.team if args.team else ''}: "
          f"{len(report.checks)} invoices, {verdict} ({seconds:.1f} s)")
    return 1 if bad else 0


def add_invoice_commands(subparsers: Any) -> None:
    """Add `invoices close|list|show|export|revenue` to the `metering` parser."""
    invoices = subparsers.add_parser("invoices", help="month close and invoices")
    sub = invoices.add_subparsers(dest="invoices_command", required=True)

    close = sub.add_parser("close", help="close a month: every team's invoice, once")
    close.add_argument("--period", required=True, type=_period, help="e.g. 2026-10")
    close.add_argument("--dry-run", action="store_true", help="rate and print; write nothing")
    close.add_argument("--force", action="store_true",
                       help="close before the grace period after the month's end has passed")
    close.add_argument("--chunk-size", type=int, default=month_close.DEFAULT_CHUNK,
                       help="teams per transaction (and per progress line)")
    close.set_defaults(func=cmd_close)

    listing = sub.add_parser("list", help="list invoices, newest first")
    listing.add_argument("--period", type=_period, default=None)
    listing.add_argument("--team", default=None)
    listing.add_argument("--status", default=None)
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="one invoice with its lines")
    show.add_argument("id")
    show.set_defaults(func=cmd_show)

    exp = sub.add_parser("export", help="a month's invoices and lines")
    exp.add_argument("--period", required=True, type=_period)
    exp.add_argument("--format", choices=["csv"], default="csv")
    exp.add_argument("--output", default=None, help="file to write (default: stdout)")
    exp.set_defaults(func=cmd_export)

    rev = sub.add_parser("revenue", help="revenue by month and plan")
    rev.add_argument("--period", type=_period, default=None)
    rev.set_defaults(func=cmd_revenue)

    verify = sub.add_parser(
        "verify", help="re-derive a month's invoices from raw lifecycle events and compare")
    verify.add_argument("--period", required=True, type=_period, help="e.g. 2026-10")
    verify.add_argument("--team", default=None, help="one team's invoices only")
    verify.set_defaults(func=cmd_verify)
