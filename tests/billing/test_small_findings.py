"""Small ways to make the service store something other than what was meant: fractions of a
cent, formula-like CSV cells, a key-less admission, a dashboard session after sign-out."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from billing.invoices.export import neutralise_formula
from tests.conftest import Keys


def test_credits_and_spend_limits_are_whole_cents(client: TestClient, api_keys: Keys) -> None:
    finance = Keys.auth(api_keys.finance)
    assert client.put("/v1/teams/team_c", json={"plan": "pro"}, headers=finance).status_code == 200
    credit = client.post("/v1/teams/team_c/credits", json={"amount": "0.001"}, headers=finance)
    assert credit.status_code == 400
    assert credit.json()["error"]["message"].startswith("amount: must be a whole number of cents")
    limit = client.put("/v1/teams/team_c", json={"spend_limit": "0.001"}, headers=finance)
    assert limit.status_code == 400
    assert limit.json()["error"]["message"].startswith("spend_limit:")
    assert client.get("/v1/teams/team_c", headers=finance).json()["spend_limit"] is None
    ok = client.post("/v1/teams/team_c/credits", json={"amount": "25.10"}, headers=finance)
    assert ok.status_code == 201 and ok.json()["amount"] == "25.10"


def test_formula_cells_are_neutralised_after_leading_whitespace() -> None:
    for cell in ("=1+1", " =1+1", "\n=cmd", "\r\n+1", "  @SUM(A1)", "\t-1", " \t=x"):
        assert neutralise_formula(cell) == "'" + cell, repr(cell)
    for cell in ("team_1", "a=b", " plain", "INV-2026-000001"):
        assert neutralise_formula(cell) == cell


def test_an_admission_without_a_key_is_401_before_its_body_is_judged(
    client: TestClient,
) -> None:
    for body in (None, {}, {"team_id": "t"}):
        response = client.post("/v1/admissions", json=body)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
    not_json = client.post("/v1/admissions", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert not_json.status_code == 401


def test_a_dashboard_session_ends_at_sign_out(
    app: FastAPI, client: TestClient, api_keys: Keys
) -> None:
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as web:
        assert web.post("/dashboard/sign-in", data={"key": api_keys.finance}).status_code == 303
        cookie = web.cookies.get("metering_dashboard")
        assert cookie and web.get("/dashboard/finance").status_code == 200
        out = web.post("/dashboard/sign-out", headers={"Origin": "https://testserver"})
        assert out.status_code == 303
    # A copy of the cookie, kept from before the sign-out, no longer opens a page.
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as stolen:
        stolen.cookies.set("metering_dashboard", cookie, domain="testserver.local")
        page = stolen.get("/dashboard/finance", cookies={"metering_dashboard": cookie})
        assert page.status_code in (303, 401), page.status_code
