"""The `metering` command: serve, worker, migrate, and every feature's commands."""

# Serve, worker and migrate are the application's own; every feature's commands come from its
# `cli.py` and are only assembled here.

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from sqlalchemy.exc import OperationalError, ProgrammingError

from billing.invoices.cli import add_invoice_commands
from billing.retention.cli import add_retention_commands
from billing.stripe_sync.cli import add_stripe_commands
from metering import migrate
from metering.auth.cli import add_key_commands
from metering.config import configure_clock, get_settings
from metering.console import CommandError, Parser, examples, port, positive_int
from metering.db import make_engine, make_sessionmaker, resolve_database_url
from metering.embedded.cli import add_db_commands
from metering.errors import MeteringError
from metering.ingest.cli import add_events_commands


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
    from metering.api.connections import HeaderTimeoutProtocol, raise_file_limit

    # Slow clients hold file descriptors: a high limit, timeouts and a connection cap keep
    # the jobs (which need descriptors for their connections) out of their reach.
    raise_file_limit()
    print(terminal.banner(settings, args.host, args.port, jobs=jobs), flush=True)
    try:
        uvicorn.run("billing.app:app_from_environment", factory=True, host=args.host,
                    port=args.port, workers=args.workers, log_level="warning",
                    timeout_graceful_shutdown=10, log_config=None, access_log=False,
                    http=HeaderTimeoutProtocol, backlog=2048)
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

    parser = Parser(
        prog="metering",
        description="Usage metering and billing for sandbox runtimes: the service, its "
                    "background jobs, and the commands finance and operators run by hand.",
        epilog=examples(
            "metering serve                       # API, dashboard and jobs on :8000",
            "metering keys create --role ingest   # a key for the orchestrator",
            "metering invoices list --period 2026-10 --format csv",
            "metering db status                   # the embedded PostgreSQL",
            "metering COMMAND --help              # each command's options and examples"))
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="migrate, then serve the API and the dashboard (and run the jobs)",
        description="Migrate the database, then serve the API and the dashboard. The "
                    "background jobs run in this process unless --no-worker. Without "
                    "DATABASE_URL an embedded PostgreSQL runs under METERING_DATA_DIR and "
                    "stops with the service.",
        epilog=examples("metering serve",
                        "metering serve --host 0.0.0.0 --port 8080 --workers 4",
                        "metering serve --no-worker   # and `metering worker` elsewhere"))
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; 0.0.0.0 for every interface")
    serve.add_argument("--port", type=port, default=8000, help="port to listen on")
    serve.add_argument("--workers", type=positive_int, default=1, help="API processes")
    serve.add_argument("--no-worker", action="store_true",
                       help="serve the API only; run the jobs with `metering worker`")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser(
        "worker", help="run the background jobs alone (any number of workers at once)",
        epilog=examples("metering worker",
                        "METERING_METRICS_PORT=9100 metering worker   # with /metrics")
    ).set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply the database migrations up to the newest",
                   epilog=examples("metering migrate",
                                   "DATABASE_URL=postgresql://... metering migrate")
                   ).set_defaults(func=cmd_migrate)

    add_key_commands(sub)
    add_retention_commands(sub)
    add_invoice_commands(sub)
    add_stripe_commands(sub)
    add_db_commands(sub)
    add_events_commands(sub)
    _verbose_everywhere(parser)
    return parser


VERBOSE_HELP = "log what happens (-vv: everything); without it a command prints its result only"


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """`-v` also after the command (`metering keys list -v`), as people type it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("-v" in a.option_strings for a in child._actions):
                    child.add_argument("-v", "--verbose", action="count",
                                       default=argparse.SUPPRESS, help=VERBOSE_HELP)
                _verbose_everywhere(child)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds like Ctrl-C does: `finally` blocks and atexit run, so the embedded
    # PostgreSQL is stopped with the process instead of being left behind.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    from billing import terminal

    args = build_parser().parse_args(argv)
    configure_clock()
    verbose: int = getattr(args, "verbose", 0)
    terminal.configure_logging(get_settings(), long_running=args.command in ("serve", "worker"),
                               verbose=verbose)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from billing.app import wire_billing

    wire_billing()
    prog = "metering " + " ".join(
        str(v) for k, v in vars(args).items() if k.endswith("command") and v)
    try:
        code: int = args.func(args)
    except (CommandError, MeteringError) as exc:
        # A bad argument only the command could check (a team or invoice that does not
        # exist, a value the service refuses): the same one line and status as argparse's.
        message = exc.message if isinstance(exc, MeteringError) else str(exc)
        print(f"{prog}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error of ours; stay silent on exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OperationalError as exc:
        print(f"{prog}: cannot reach the database: {_first_line(exc.orig or exc)}",
              file=sys.stderr)
        return 1
    except Exception as exc:
        if isinstance(exc, ProgrammingError) and getattr(exc.orig, "sqlstate", "") == "42P01":
            print(f"{prog}: the database has no schema yet: run `metering migrate` first",
                  file=sys.stderr)
            return 1
        if verbose:
            raise
        print(f"{prog}: failed: {type(exc).__name__}: {_first_line(exc)} "
              "(run with -v for the details)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


if __name__ == "__main__":
    sys.exit(main())
