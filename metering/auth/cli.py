"""`metering keys create|revoke|list`: API keys from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from metering import migrate
from metering.auth import service as keys
from metering.config import get_settings
from metering.db import make_engine, make_sessionmaker, resolve_database_url, transaction


def cmd_keys_create(args: argparse.Namespace) -> int:
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


def cmd_keys_list(_: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    with transaction(make_sessionmaker(engine)) as session:
        for key in keys.list_keys(session):
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id}  {key.role:8} {key.team_id or '-':20} {key.prefix}…  {state}")
    return 0


def add_key_commands(sub: Any) -> None:
    """Add `keys create|revoke|list` to the `metering` parser."""
    keys_p = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--role", required=True, choices=["ingest", "team", "finance", "admin"])
    create.add_argument("--team", default=None, help="the team a team key reads")
    create.add_argument("--name", default=None)
    create.add_argument("-q", "--quiet", action="store_true",
                        help="print the key alone (for KEY=$(metering keys create ... -q))")
    create.set_defaults(func=cmd_keys_create)
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_keys_revoke)
    keys_sub.add_parser("list", help="list keys (never their secrets)").set_defaults(
        func=cmd_keys_list)
