"""The `metering` command as a person uses it: every option explained with its default, an
example for every command, aligned tables in a sensible order (or JSON and CSV), and every bad
argument answered with exit status 2 and one line that says what is wrong, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing import cli
from billing.invoices.models import Invoice
from metering.config import get_settings
from metering.db import transaction
from tests.conftest import Keys


@pytest.fixture
def metering(database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Iterator[object]:
    """Run `metering ARGS` in this process against the test database: (status, out, err)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = cli.main(list(argv))
        except SystemExit as exit_:
            status = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return status, out, err

    yield run
    get_settings.cache_clear()


def leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in action.choices.values():
            yield from leaves(child)


def test_every_option_is_explained_and_every_command_has_examples() -> None:
    commands = list(leaves(cli.build_parser()))
    assert len(commands) >= 18
    for command in commands:
        for action in command._actions:
            assert action.help, f"{command.prog} {action.option_strings or action.dest}: no help"
        assert "examples:\n  metering " in (command.epilog or ""), f"{command.prog}: no examples"
    serve = cli.build_parser().parse_args(["serve"])
    assert (serve.host, serve.port, serve.workers) == ("127.0.0.1", 8000, 1)
    helped = io.StringIO()
    [serve_parser] = [c for c in commands if c.prog == "metering serve"]
    serve_parser.print_help(helped)
    assert "(default: 8000)" in helped.getvalue() and "(default: 127.0.0.1)" in helped.getvalue()


def test_version(metering: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("metering 0.")


BAD_ARGUMENTS = [
    (["invoices", "list", "--status", "bogus"], "--status"),
    (["invoices", "list", "--team", "nope"], "no team 'nope'"),
    (["invoices", "export", "--period", "2026-10", "--output", "/nonexistent/x.csv"],
     "/nonexistent"),
    (["invoices", "list", "--period", "2026-13"], "--period"),
    (["invoices", "list", "--format", "xml"], "--format"),
    (["invoices", "close", "--period", "october"], "--period"),
    (["invoices", "close", "--period", "2026-10", "--chunk-size", "0"], "--chunk-size"),
    (["invoices", "show", "inv_nope"], "no invoice inv_nope"),
    (["keys", "create", "--role", "wizard"], "--role"),
    (["keys", "create", "--role", "team"], "--team"),
    (["keys", "create", "--role", "ingest", "--team", "team_1"], "--team"),
    (["keys", "revoke", "key_nope"], "no key key_nope"),
    (["keys", "list", "--colour"], "--colour"),
    (["serve", "--port", "99999"], "--port"),
    (["serve", "--workers", "none"], "--workers"),
    (["stripe", "sync", "--workers", "0"], "--workers"),
    (["retention"], "COMMAND"),
    (["bogus"], "bogus"),
]


@pytest.mark.parametrize(("argv", "named"), BAD_ARGUMENTS,
                         ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_line_and_status_2(
    metering: object, argv: list[str], named: str,
) -> None:
    status, out, err = metering(*argv)  # type: ignore[operator]
    assert status == 2, (out, err)
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert named in err and "Traceback" not in err
    assert err.startswith("metering")


def _invoice(sessions: sessionmaker[Session], team: str, number: str, n: int) -> None:
    with transaction(sessions) as session:
        session.add(Invoice(
            id=f"inv_cli_{n:02d}", team_id=team, period=f"2025-{n:02d}", kind="period",
            number=number, status="finalized", currency="usd", subtotal=Decimal(n),
            credits_applied=Decimal(0), total=Decimal(n), finalized_at=datetime.now(UTC)))


def test_invoices_list_is_a_table_in_number_order_or_json_or_csv(
    metering: object, client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    r = client.put("/v1/teams/team_cli", json={"plan": "pro"},
                   headers=Keys.auth(api_keys.finance))
    assert r.status_code == 200, r.text
    # Made out of order, as corrections and re-runs make them.
    for n in (10, 9, 6, 7, 8, 11):
        _invoice(sessions, "team_cli", f"INV-2026-{n:06d}", n)
    status, out, err = metering("invoices", "list")  # type: ignore[operator]
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NUMBER", "ID", "TEAM", "MONTH", "KIND", "STATUS", "TOTAL",
                                "CURRENCY"]
    assert [line.split()[0] for line in lines[1:]] == [
        f"INV-2026-{n:06d}" for n in (6, 7, 8, 9, 10, 11)]
    # Aligned: every row's total ends in the same column as the header's.
    ends = {line.index("USD") for line in lines[1:]}
    assert len(ends) == 1
    status, out, _ = metering("invoices", "list", "--status", "finalized",  # type: ignore[operator]
                              "--format", "json")
    assert status == 0
    assert [r["number"] for r in json.loads(out)][:2] == ["INV-2026-000006", "INV-2026-000007"]
    status, out, _ = metering("invoices", "list", "--team", "team_cli",  # type: ignore[operator]
                              "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and len(rows) == 6 and rows[0]["total"] == "6.00"


def test_keys_list_has_a_header_and_create_quiet_prints_the_key_alone(metering: object) -> None:
    status, key, err = metering("keys", "create", "--role", "ingest",  # type: ignore[operator]
                                "--name", "orchestrator", "--quiet")
    assert (status, err) == (0, "") and key.startswith("mk_ingest_") and key.count("\n") == 1
    status, out, err = metering("keys", "list")  # type: ignore[operator]
    assert (status, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["ID", "ROLE", "TEAM"]
    assert any("orchestrator" in row and "ingest" in row for row in rows)
    assert key.strip() not in out


def test_a_dry_run_close_says_what_would_be_made(metering: object) -> None:
    status, out, _ = metering("invoices", "close", "--period", "2026-09",  # type: ignore[operator]
                              "--dry-run", "--force")
    assert status == 0
    assert "would be made" in out and "would make" not in out
