"""`metering events example`: a batch of events to post, as the orchestrator would."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from metering.console import examples
from metering.core.clock import utc_now
from metering.examples import example_batch


def cmd_example(args: argparse.Namespace) -> int:
    batch = example_batch(utc_now(), team_id=args.team, sandbox_id=args.sandbox)
    print(orjson.dumps(batch, option=orjson.OPT_INDENT_2).decode())
    return 0


def add_events_commands(sub: Any) -> None:
    events = sub.add_parser("events", help="example events to post to POST /v1/events",
                            epilog=examples("metering events example > batch.json"))
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    example = events_sub.add_parser(
        "example", help="print a batch: one sandbox's 10 minutes, ended a minute ago",
        description="Print a CloudEvents batch (JSON) for one sandbox: created at 2 vCPU and "
                    "1024 MiB, a host_stats sample a minute, killed a minute ago. It bills "
                    "1,200 vCPU-seconds and 600 GiB-seconds.",
        epilog=examples(
            "metering events example > batch.json",
            "metering events example --team team_42 | curl -s localhost:8000/v1/events \\",
            "    -H \"Authorization: Bearer $INGEST\" "
            "-H 'Content-Type: application/cloudevents-batch+json' -d @-"))
    example.add_argument("--team", default="team_8c1", help="the team the sandbox belongs to")
    example.add_argument("--sandbox", default="sbx_3f9a", help="the sandbox's id")
    example.set_defaults(func=cmd_example)
