"""`metering invoices ...`: close a month, list, show, export and summarize invoices.

Wired into `billing.cli` by `add_invoice_commands(subparsers)`. Each command opens its own
engine from the settings (as the other commands do) and prints for a person at a terminal:
the close shows a progress line per chunk of teams on stderr and a summary at the end.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any, TextIO

from sqlalchemy.orm import Session, sessionmaker

from billing.invoices import close as month_close
from billing.invoices import export
from billing.invoices import repository as repo
from billing.invoices.models import INVOICE_STATUSES
from billing.invoices.schemas import invoice_out
from metering.config import get_settings
from metering.console import (
    Column,
    CommandError,
    add_format_option,
    examples,
    positive_int,
    render,
    writable_file,
)
from metering.db import make_engine, make_sessionmaker, resolve_database_url, transaction
from metering.errors import NotFound
from metering.teams.models import Team


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def print_summary(summary: month_close.CloseSummary, out: TextIO) -> None:
    made = "would be made" if summary.dry_run else "made"
    existed = "already exists" if summary.already_existed == 1 else "already exist"
    print(f"close {summary.period}{' (dry run)' if summary.dry_run else ''}: "
          f"{_count(summary.teams_considered, 'team')} considered; "
          f"{_count(summary.invoices_made, 'invoice')} {made}, "
          f"{summary.already_existed} {existed}", file=out)
    totals = summary.as_dict()["total_amount"]
    for currency, amount in totals.items():
        print(f"  total of the invoices {made}: {amount} {currency.upper()}", file=out)
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
        chunk_size=args.chunk_size,
        # Progress is for a person watching; piped or scripted, the summary is the result.
        progress=_printer(sys.stderr) if sys.stderr.isatty() or args.verbose else None)
    if args.dry_run:
        for p in summary.previews:
            print(f"{p.team_id}\t{p.total} {p.currency.upper()}\t{p.lines} lines")
    print_summary(summary, sys.stdout)
    return 1 if summary.failures else 0


INVOICE_COLUMNS = (
    Column("number", "NUMBER"), Column("id", "ID"), Column("team_id", "TEAM"),
    Column("period", "MONTH"), Column("kind", "KIND"), Column("status", "STATUS"),
    Column("total", "TOTAL", right=True), Column("currency", "CURRENCY"))


def number_order(number: str | None, invoice_id: str) -> tuple[int, str, int, str]:
    """Invoice numbers in numeric order (INV-2026-000009 before INV-2026-000010, and a
    number without zero padding too); unnumbered invoices last."""
    if not number:
        return (1, "", 0, invoice_id)
    found = re.fullmatch(r"(.*?)(\d+)", number)
    if found is None:
        return (0, number, 0, invoice_id)
    return (0, found.group(1), int(found.group(2)), invoice_id)


def cmd_list(args: argparse.Namespace) -> int:
    with transaction(_sessions(1)) as session:
        if args.team is not None and session.get(Team, args.team) is None:
            raise CommandError(f"--team: no team {args.team!r}")
        rows: list[dict[str, Any]] = []
        after = None
        while True:
            page = repo.list_invoices(session, team_id=args.team, period=args.period,
                                      status=args.status, limit=500, after=after)
            rows += [invoice_out(row, []).model_dump(mode="json") for row in page]
            if len(page) < 500:
                break
            after = (page[-1].created_at, page[-1].id)
    rows.sort(key=lambda r: number_order(r["number"], r["id"]))
    for row in rows:
        row["currency"] = row["currency"].upper()
    render(rows, INVOICE_COLUMNS, args.format, empty="no invoices match")
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
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


REVENUE_COLUMNS = (
    Column("period", "MONTH"), Column("currency", "CURRENCY"), Column("plan", "PLAN"),
    Column("invoices", "INVOICES", right=True), Column("plan_fees", "FEES", right=True),
    Column("usage", "USAGE", right=True), Column("commitment_true_up", "TRUE-UP", right=True),
    Column("adjustments", "ADJUSTMENTS", right=True), Column("amount", "AMOUNT", right=True),
    Column("credits_applied", "CREDITS", right=True), Column("total", "TOTAL", right=True))


def cmd_revenue(args: argparse.Namespace) -> int:
    with transaction(_sessions(1)) as session:
        months = export.revenue(session, args.period)
    rows: list[dict[str, Any]] = []
    for m in sorted(months, key=lambda m: (m["period"], m["currency"])):
        for p in sorted(m["by_plan"], key=lambda p: p["plan_code"] or ""):
            rows.append({"period": m["period"], "currency": m["currency"].upper(),
                         "plan": p["plan_code"] or "(no plan)", "invoices": p["invoices"],
                         "plan_fees": p["plan_fees"], "usage": p["usage"],
                         "commitment_true_up": p["commitment_true_up"],
                         "adjustments": p["adjustments"], "amount": p["amount"]})
        rows.append({"period": m["period"], "currency": m["currency"].upper(),
                     "plan": "(all)", "invoices": m["invoices"], "amount": m["subtotal"],
                     "credits_applied": m["credits_applied"], "total": m["total"]})
    render(rows, REVENUE_COLUMNS, args.format, empty="no invoices")
    return 0


PERIOD_HELP = "the month, as YYYY-MM (e.g. 2026-10)"
# Drafts never outlive the close's transaction, so they are never listed.
LISTED_STATUSES = [status for status in INVOICE_STATUSES if status != "draft"]


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
    invoices = subparsers.add_parser(
        "invoices", help="month close and invoices",
        epilog=examples("metering invoices close --period 2026-10 --dry-run",
                        "metering invoices list --period 2026-10"))
    sub = invoices.add_subparsers(dest="invoices_command", required=True, metavar="COMMAND")

    close = sub.add_parser(
        "close", help="close a month: every team's invoice, once",
        description="Close a month: build, number and finalize every team's invoice. Safe to "
                    "run again and on several machines at once (each invoice is made once).",
        epilog=examples("metering invoices close --period 2026-10 --dry-run   # look first",
                        "metering invoices close --period 2026-10"))
    close.add_argument("--period", required=True, type=_period, help=PERIOD_HELP)
    close.add_argument("--dry-run", action="store_true", help="rate and print; write nothing")
    close.add_argument("--force", action="store_true",
                       help="close before the grace period after the month's end has passed")
    close.add_argument("--chunk-size", type=positive_int, default=month_close.DEFAULT_CHUNK,
                       help="teams per transaction (and per progress line)")
    close.set_defaults(func=cmd_close)

    listing = sub.add_parser(
        "list", help="list invoices in number order",
        epilog=examples("metering invoices list --period 2026-10",
                        "metering invoices list --status sync_failed",
                        "metering invoices list --team team_8c1 --format json"))
    listing.add_argument("--period", type=_period, default=None,
                         help="only this month (YYYY-MM); all months when left out")
    listing.add_argument("--team", default=None, help="only this team's invoices")
    listing.add_argument("--status", default=None, choices=LISTED_STATUSES,
                         help="only invoices in this state")
    add_format_option(listing)
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="one invoice with its lines",
                          epilog=examples("metering invoices show inv_3f9a1c2b4d5e6f708192a3b4"))
    show.add_argument("id", help="the invoice's id (inv_…), as `invoices list` shows it")
    show.set_defaults(func=cmd_show)

    exp = sub.add_parser(
        "export", help="a month's invoices and their lines as CSV",
        epilog=examples("metering invoices export --period 2026-10 > invoices-2026-10.csv",
                        "metering invoices export --period 2026-10 --output invoices.csv"))
    exp.add_argument("--period", required=True, type=_period, help=PERIOD_HELP)
    exp.add_argument("--format", choices=["csv"], default="csv",
                     help="one row per invoice line, with the invoice's figures")
    exp.add_argument("--output", default=None, type=writable_file,
                     help="the file to write; standard output when left out")
    exp.set_defaults(func=cmd_export)

    rev = sub.add_parser("revenue", help="revenue by month and plan",
                         epilog=examples("metering invoices revenue",
                                         "metering invoices revenue --period 2026-10 --format csv"))
    rev.add_argument("--period", type=_period, default=None,
                     help="only this month (YYYY-MM); every month when left out")
    add_format_option(rev)
    rev.set_defaults(func=cmd_revenue)

    verify = sub.add_parser(
        "verify", help="re-derive a month's invoices from raw lifecycle events and compare",
        description="Recompute every invoice of the month from the raw lifecycle events by an "
                    "independent path; name every difference (exit status 1).",
        epilog=examples("metering invoices verify --period 2026-10",
                        "metering invoices verify --period 2026-10 --team team_8c1"))
    verify.add_argument("--period", required=True, type=_period, help=PERIOD_HELP)
    verify.add_argument("--team", default=None, help="one team's invoices only")
    verify.set_defaults(func=cmd_verify)
