"""Live credit counts every usage not on a finalized invoice, whatever its month, and the
scheduled close invoices every ended month that was never closed, oldest first.

The situation of a fresh deployment fed weeks of history: October still open, November closed
and invoiced, the clock in December.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing.invoices import close as month_close
from metering.config import Settings
from metering.db import transaction
from tests.billing.test_close import DEC, NOV, OCT, SEP, close, pin, put_team, query, run
from tests.conftest import Keys

# 2 vCPU and 1 GiB cost $0.0000325 a second: 100 h is $11.70, 2,000 h is $234.00.
PER_HOUR = Decimal("0.0000325") * 3600


def balance(client: TestClient, keys: Keys, team: str) -> dict[str, str]:
    response = client.get(f"/v1/teams/{team}/balance", headers=Keys.auth(keys.finance))
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def admit(client: TestClient, keys: Keys, team: str, sandbox: str) -> dict[str, object]:
    response = client.post("/v1/admissions", json={
        "team_id": team, "sandbox_id": sandbox, "vcpu": 1, "memory_mib": 512},
        headers=Keys.auth(keys.ingest))
    body: dict[str, object] = response.json()
    return body


def test_an_open_older_month_counts_while_a_newer_one_is_invoiced_and_the_close_takes_it(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(DEC + timedelta(days=4))
    put_team(client, api_keys, "t_h", "hobby", SEP)
    run(client, api_keys, "t_h", "oct_1", OCT + timedelta(days=3), 100 * 3600)  # $11.70
    run(client, api_keys, "t_h", "nov_1", NOV + timedelta(days=3), 200 * 3600)  # $23.40
    close(sessions, settings, "2026-11")
    applied = query(sessions, "SELECT credits_applied FROM invoices WHERE period = '2026-11'")
    assert [r[0] for r in applied] == [Decimal("23.40")]

    # October is not on any invoice: it counts, beside what November's invoice applied.
    before = balance(client, api_keys, "t_h")
    assert (before["credit_used"], before["credit_remaining"]) == ("35.10", "64.90")

    made = month_close.close_due_periods(sessions, settings)
    assert [s.period for s in made] == ["2026-09", "2026-10"]
    assert [s.invoices_made for s in made] == [0, 1]
    assert month_close.close_due_periods(sessions, settings) == []
    after = balance(client, api_keys, "t_h")
    assert (after["credit_used"], after["credit_remaining"]) == ("35.10", "64.90")
    invoices = query(sessions, "SELECT period, status FROM invoices ORDER BY period")
    assert [tuple(r) for r in invoices] == [("2026-10", "finalized"), ("2026-11", "finalized")]


def test_a_hobby_team_whose_only_usage_is_in_an_unclosed_older_month_is_stopped(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(DEC + timedelta(days=4))
    put_team(client, api_keys, "t_h", "hobby", SEP)
    put_team(client, api_keys, "t_p", "pro", SEP)
    run(client, api_keys, "t_h", "oct_big", OCT + timedelta(days=1), 1000 * 3600)  # $117.00
    run(client, api_keys, "t_p", "nov_p", NOV + timedelta(days=1), 3600)
    close(sessions, settings, "2026-11")  # Hobby's November: nothing to bill, no invoice

    refused = admit(client, api_keys, "t_h", "new_box")
    assert refused["admitted"] is False and refused["reason"] == "credit_exhausted"
    body = balance(client, api_keys, "t_h")
    assert (body["credit_used"], body["credit_remaining"]) == ("117.00", "0.00")
    # Pro's invoiced November and its open month: admitted as before.
    assert admit(client, api_keys, "t_p", "pro_box")["admitted"] is True


def test_a_draft_is_not_invoiced_and_a_month_left_with_errors_stays_open(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(DEC + timedelta(days=4))
    put_team(client, api_keys, "t_h", "hobby", SEP)
    run(client, api_keys, "t_h", "oct_1", OCT + timedelta(days=3), 100 * 3600)  # $11.70
    close(sessions, settings, "2026-10")
    assert balance(client, api_keys, "t_h")["credit_used"] == "11.70"
    # The invoice turned back into a draft (as a close holds one back that failed its
    # verification): October's usage is uninvoiced again.
    with transaction(sessions) as session:
        session.execute(text("DELETE FROM credit_applications"))
        session.execute(text("UPDATE invoices SET status = 'draft', number = NULL"))
    assert balance(client, api_keys, "t_h")["credit_used"] == "11.70"
    assert query(sessions, "SELECT count(*) FROM credit_applications")[0][0] == 0
