"""`metering keys create|revoke|list`: API keys from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from metering import migrate
from metering.auth import service as keys
from metering.auth.models import ROLES
from metering.config import get_settings
from metering.console import Column, CommandError, add_format_option, examples, render
from metering.core.clock import rfc3339
from metering.db import make_engine, make_sessionmaker, resolve_database_url, transaction


def cmd_keys_create(args: argparse.Namespace) -> int:
    if args.role == "team" and not args.team:
        raise CommandError("--team: a team key needs the team it reads")
    if args.role != "team" and args.team:
        raise CommandError(f"--team: only team keys are bound to a team, not {args.role} keys")
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    migrate.upgrade(engine)
    with transaction(make_sessionmaker(engine)) as session:
        created = keys.create_key(session, args.role, args.team, args.name)
    if args.quiet:
        print(created.key)
        return 0
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


KEY_COLUMNS = (Column("id", "ID"), Column("role", "ROLE"), Column("team_id", "TEAM"),
               Column("name", "NAME"), Column("prefix", "STARTS WITH"),
               Column("state", "STATE"), Column("created_at", "CREATED"))


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    with transaction(make_sessionmaker(engine)) as session:
        rows = [{
            "id": key.id, "role": key.role, "team_id": key.team_id, "name": key.name,
            "prefix": f"{key.prefix}…" if args.format == "table" else key.prefix,
            "state": "revoked" if key.revoked_at else "active",
            "created_at": rfc3339(key.created_at),
        } for key in keys.list_keys(session)]
    render(rows, KEY_COLUMNS, args.format, empty="no keys yet: `metering keys create --help`")
    return 0


def add_key_commands(sub: Any) -> None:
    """Add `keys create|revoke|list` to the `metering` parser."""
    keys_p = sub.add_parser("keys", help="create, list and revoke API keys",
                            epilog=examples("metering keys create --role finance --name alice",
                                            "metering keys list --format json"))
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = keys_sub.add_parser(
        "create", help="create a key (its secret is printed once)",
        description="Create an API key. Its secret is printed once; only its SHA-256 digest "
                    "is stored.",
        epilog=examples("metering keys create --role ingest --name orchestrator",
                        "metering keys create --role team --team team_8c1",
                        "TEAM=$(metering keys create --role team --team team_8c1 --quiet)"))
    create.add_argument("--role", required=True, choices=list(ROLES),
                        help="ingest (events, admissions), team (reads one team), finance "
                             "(reads all, month close, Stripe) or admin (everything)")
    create.add_argument("--team", default=None, help="the team a team key reads (team keys only)")
    create.add_argument("--name", default=None,
                        help="a note on whose key it is, shown by `keys list`")
    create.add_argument("-q", "--quiet", action="store_true",
                        help="print the key alone (for KEY=$(metering keys create ... -q))")
    create.set_defaults(func=cmd_keys_create)
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once",
                                 epilog=examples("metering keys revoke key_3f9a1c2b4d5e6f70"))
    revoke.add_argument("id", help="the key's id (key_…), as `keys list` shows it")
    revoke.set_defaults(func=cmd_keys_revoke)
    listing = keys_sub.add_parser("list", help="list keys, oldest first (never their secrets)",
                                  epilog=examples("metering keys list",
                                                  "metering keys list --format csv"))
    add_format_option(listing)
    listing.set_defaults(func=cmd_keys_list)
