"""The `metering` command: serve, worker, migrate, keys, retention (and invoices and stripe)."""

# Serve, worker and migrate are the application's own; every feature's commands come from its
# `cli.py` and are only assembled here.

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from billing.db_cli import add_db_commands
from billing.events_cli import add_events_commands
from billing.invoices.cli import add_invoice_commands
from billing.retention.cli import add_retention_commands
from billing.stripe_sync.cli import add_stripe_commands
from metering import migrate
from metering.auth.cli import add_key_commands
from metering.config import get_settings
from metering.db import make_engine, make_sessionmaker, resolve_database_url
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

    from billing import terminal

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
    jobs = "none here (--no-worker): run `metering worker`"
    if settings.run_scheduler and not args.no_worker:
        from billing.worker import start_scheduler

        scheduler = start_scheduler(make_sessionmaker(engine), settings)
        jobs = "in this process"
    print(terminal.banner(settings, args.host, args.port, jobs=jobs), flush=True)
    try:
        uvicorn.run("billing.app:app_from_environment", factory=True, host=args.host,
                    port=args.port, workers=args.workers, log_level="warning",
                    timeout_graceful_shutdown=10, log_config=None, access_log=False)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        engine.dispose()
        print("stopped", flush=True)
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
    print("worker running; Ctrl-C stops it", flush=True)
    stop.wait()
    scheduler.shutdown(wait=True)
    engine.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from billing.terminal import version

    parser = argparse.ArgumentParser(prog="metering", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what happens (-vv: everything); without it, commands print "
                             "their result only")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API and the in-process scheduler")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="API processes")
    serve.add_argument("--no-worker", action="store_true", help="API only; run `metering worker`")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("worker", help="run the background jobs alone").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply migrations up to head").set_defaults(func=cmd_migrate)

    add_key_commands(sub)
    add_retention_commands(sub)
    add_invoice_commands(sub)
    add_stripe_commands(sub)
    add_db_commands(sub)
    add_events_commands(sub)
    return parser


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds like Ctrl-C does: `finally` blocks and atexit run, so the embedded
    # PostgreSQL is stopped with the process instead of being left behind.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    from billing import terminal

    args = build_parser().parse_args(argv)
    terminal.configure_logging(get_settings(), long_running=args.command in ("serve", "worker"),
                               verbose=getattr(args, "verbose", 0))
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from billing.app import wire_billing

    wire_billing()
    try:
        code: int = args.func(args)
    except MeteringError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error of ours; stay silent on exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code


if __name__ == "__main__":
    sys.exit(main())
