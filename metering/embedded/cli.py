"""`metering db status|stop`: what the embedded PostgreSQL is doing, and stopping it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from metering import embedded
from metering.config import get_settings
from metering.console import examples


def _command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    parts = [Path(p).name if i == 0 else p for i, p in
             enumerate(raw.decode(errors="replace").split("\0")) if p]
    if len(parts) > 1 and parts[0].startswith("python"):
        parts = parts[1:]
    return " ".join([Path(parts[0]).name, *parts[1:]])[:60] if parts else "?"


def cmd_status(_: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.database_url:
        print(f"DATABASE_URL is set: the service uses {embedded.describe_database(settings)}; "
              "the embedded PostgreSQL is not used.")
        return 0
    state = embedded.status(settings.data_dir)
    where = embedded.pgdata(settings.data_dir)
    if not state.initialised:
        print(f"not created yet: the first `metering serve` makes it in {where}")
        return 0
    if not state.running:
        print(f"stopped (data in {where})")
        return 0
    print(f"running, pid {state.pid}, data in {where}")
    if state.socket_dir:
        print(f"  connect: psql -h {state.socket_dir} -U postgres postgres")
    users = [p for p in state.users if p != os.getpid()]
    if users:
        for pid in users:
            print(f"  in use by pid {pid}: {_command_of(pid)}")
    else:
        print("  in use by no metering process: `metering db stop` stops it")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.database_url:
        print("DATABASE_URL is set: there is no embedded PostgreSQL to stop.")
        return 0
    state = embedded.status(settings.data_dir)
    users = [p for p in state.users if p != os.getpid()]
    if state.running and users and not args.force:
        names = ", ".join(f"pid {p} ({_command_of(p)})" for p in users)
        print(f"not stopped: in use by {names}; stop that first (Ctrl-C), or use --force",
              file=sys.stderr)
        return 1
    if embedded.stop(settings.data_dir):
        print(f"stopped (data kept in {embedded.pgdata(settings.data_dir)})")
    else:
        print("not running")
    return 0


def add_db_commands(sub: Any) -> None:
    db = sub.add_parser(
        "db", help="the embedded PostgreSQL: status, stop",
        description="The embedded PostgreSQL (used when DATABASE_URL is unset) runs while a "
                    "metering process uses it and stops with the last one.",
        epilog=examples("metering db status", "metering db stop"))
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_sub.add_parser("status", help="is it running, where is its data, who uses it",
                      epilog=examples("metering db status",
                                      "METERING_DATA_DIR=/srv/metering metering db status")
                      ).set_defaults(func=cmd_status)
    stop = db_sub.add_parser("stop", help="stop it now (its data is kept)",
                             epilog=examples("metering db stop",
                                             "metering db stop --force   # even under the service"))
    stop.add_argument("--force", action="store_true",
                      help="stop it even while `metering serve` or a worker uses it")
    stop.set_defaults(func=cmd_stop)
