"""Self-verifying months: invoices re-derived from raw lifecycle events, by `metering invoices
verify` and by the close before it finalizes anything.

A clean month verifies; a corrupted invoice line is named (team, line, stored, recomputed); a
close over a corrupted rollup row or segment keeps that team's invoice a draft, out of Stripe,
and says why.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing import cli
from billing.invoices import cli as invoices_cli
from metering.config import Settings
from metering.db import transaction
from metering.executions.jobs import fold_rollup_deltas
from tests.billing.test_close import NOV, OCT, SEP, close, iso, pin, put_team, query, run
from tests.conftest import Keys, event


def execute(sessions: sessionmaker[Session], sql: str, **params: Any) -> None:
    with transaction(sessions) as session:
        session.execute(text(sql), params)


def resized(client: TestClient, keys: Keys, team: str, execution: str, *, end: bool) -> None:
    """2 vCPU / 1 GiB from Oct 5 10:00, 4 vCPU from 12:00, paused at 13:30 (or no end: it
    stopped reporting at 12:00, its newest event)."""
    start = OCT + timedelta(days=4, hours=10)
    batch = [
        event("created", team=team, execution=execution, sandbox=f"sbx_{execution}",
              time=iso(start), vcpu=2, memory_mib=1024),
        event("updated", team=team, execution=execution, sandbox=f"sbx_{execution}",
              time=iso(start + timedelta(hours=2)), vcpu=4),
    ]
    if end:
        batch.append(event("paused", team=team, execution=execution, sandbox=f"sbx_{execution}",
                           time=iso(start + timedelta(hours=3, minutes=30))))
    response = client.post("/v1/events", json=batch, headers=Keys.auth(keys.ingest))
    assert response.status_code == 200 and response.json()["accepted"] == len(batch)


@pytest.fixture
def october(client: TestClient, api_keys: Keys) -> None:
    """A Pro team, a Hobby team (its credit applied) and an Enterprise team with usage."""
    pin(NOV + timedelta(days=10))
    for team, plan in (("t_pro", "pro"), ("t_hobby", "hobby"), ("t_ent", "enterprise")):
        put_team(client, api_keys, team, plan, SEP)
    run(client, api_keys, "t_pro", "p1", OCT + timedelta(days=2), 7200, vcpu=8,
        memory_mib=4096)
    resized(client, api_keys, "t_pro", "p2", end=True)
    resized(client, api_keys, "t_hobby", "h1", end=True)
    run(client, api_keys, "t_ent", "e1", OCT + timedelta(days=30, hours=23), 7200)  # to Nov


def verify_cli(sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(invoices_cli, "_sessions", lambda pool_size=2: sessions)
    code = cli.main(["invoices", "verify", "--period", "2026-10", *args])
    return code, capsys.readouterr().out


def test_a_clean_month_verifies_and_a_corrupted_line_is_named(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
    october: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    summary = close(sessions, settings, "2026-10")
    assert (summary.invoices_made, summary.failures) == (3, [])
    code, out = verify_cli(sessions, monkeypatch, capsys)
    assert code == 0 and "3 invoices, OK" in out, out

    [(invoice_id, number)] = query(
        sessions, "SELECT id, number FROM invoices WHERE team_id = 't_pro'")
    answer = client.get(f"/v1/invoices/{invoice_id}/verification",
                        headers=Keys.auth(api_keys.finance))
    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["source"]) == ("ok", "verify")

    # One line of a finalized invoice changed behind the service's back.
    [(position, description)] = query(sessions, """
        SELECT position, description FROM invoice_lines
        WHERE invoice_id = :i AND kind = 'usage_vcpu'""", i=invoice_id)
    execute(sessions, """UPDATE invoice_lines SET quantity = quantity + 1, amount = amount + 1
                         WHERE invoice_id = :i AND position = :p""", i=invoice_id, p=position)
    code, out = verify_cli(sessions, monkeypatch, capsys)
    assert code == 1
    [line] = [x for x in out.splitlines() if x.startswith("t_pro ")]
    assert line.startswith(f"t_pro {number} line {position} ({description}): stored ")
    assert "stored 93,601 vCPU-s" in line and "recomputed 93,600 vCPU-s" in line, line
    assert "1 invoice(s) differ" in out and "t_hobby" not in out and "t_ent" not in out
    code, out = verify_cli(sessions, monkeypatch, capsys, "--team", "t_hobby")
    assert code == 0 and "1 invoices, OK" in out

    shown = client.get(f"/v1/invoices/{invoice_id}/verification",
                       headers=Keys.auth(api_keys.team(sessions, "t_pro"))).json()
    assert shown["status"] == "difference"
    # The invoice's stored total was left alone: only the line differs.
    assert [(d["team_id"], d["position"]) for d in shown["differences"]] == [("t_pro", position)]
    other = client.get(f"/v1/invoices/{invoice_id}/verification",
                       headers=Keys.auth(api_keys.team(sessions, "t_hobby")))
    assert other.status_code == 404


@pytest.mark.parametrize("corrupt", ["rollup", "segment"])
def test_a_close_over_corrupted_usage_keeps_that_invoice_a_draft_and_says_why(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
    october: None, corrupt: str,
) -> None:
    resized(client, api_keys, "t_hobby", "h_open", end=False)
    if corrupt == "rollup":
        fold_rollup_deltas(sessions)  # the settled usage is in its hourly rows now
        execute(sessions, """UPDATE usage_rollups SET vcpu_ms = vcpu_ms + 3600000
                             WHERE team_id = 't_hobby' AND hour = :h""",
                h=OCT + timedelta(days=4, hours=11))
    else:  # the stale execution without an end is integrated from its segments
        execute(sessions, """UPDATE execution_segments SET vcpu = 3
                             WHERE execution_id = 'h_open' AND seq = 0""")

    summary = close(sessions, settings, "2026-10")
    assert summary.invoices_made == 2
    [failure] = summary.failures
    assert failure.team_id == "t_hobby"
    assert "held as a draft" in failure.reason and "vCPU time" in failure.reason
    assert "recomputed 50,400 vCPU-s" in failure.reason, failure.reason
    rows = query(sessions, "SELECT team_id, status, number FROM invoices ORDER BY team_id")
    assert [(r.team_id, r.status, r.number is None) for r in rows] == [
        ("t_ent", "finalized", False), ("t_hobby", "draft", True), ("t_pro", "finalized", False)]
    assert query(sessions, "SELECT count(*) FROM credit_applications")[0][0] == 0  # hobby's
    [message] = query(sessions, """SELECT type, payload FROM outbox_messages
                                   WHERE type = 'invoice.verification_failed'""")
    data = message.payload["data"]
    assert data["team_id"] == "t_hobby" and "vCPU time" in data["reason"]
    [(draft,)] = query(sessions, "SELECT id FROM invoices WHERE status = 'draft'")
    shown = client.get(f"/v1/invoices/{draft}/verification",
                       headers=Keys.auth(api_keys.finance)).json()
    assert (shown["status"], shown["source"]) == ("difference", "close")
    # Not invoiced: the team's October still counts as uninvoiced usage in its credit.
    balance = client.get("/v1/teams/t_hobby/balance", headers=Keys.auth(api_keys.finance))
    assert balance.json()["credit_used"] != "0.00"

    # Repaired, the next close makes the invoice anew and finalizes it.
    if corrupt == "rollup":
        execute(sessions, """UPDATE usage_rollups SET vcpu_ms = vcpu_ms - 3600000
                             WHERE team_id = 't_hobby' AND hour = :h""",
                h=OCT + timedelta(days=4, hours=11))
    else:
        execute(sessions, "UPDATE execution_segments SET vcpu = 2 WHERE execution_id = 'h_open'")
    again = close(sessions, settings, "2026-10")
    assert (again.invoices_made, again.already_existed, again.failures) == (1, 2, [])
    rows = query(sessions, "SELECT status FROM invoices WHERE team_id = 't_hobby'")
    assert [r.status for r in rows] == ["finalized"]
