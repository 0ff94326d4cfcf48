"""Tests for the Stripe test double, driven through the real `stripe` package over HTTP.

They pin down the behaviours the billing sync relies on: Stripe's wire format and error shapes,
parameter strictness, the invoice state machine, idempotency (including lost responses) and
signed webhooks. If the double drifts from Stripe here, tests of the sync would lie.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import pytest
import stripe
from stripe.params import CustomerSearchParams

from tests.stripe_double import StripeDouble, sign_payload


@pytest.fixture(scope="module")
def double() -> Iterator[StripeDouble]:
    with StripeDouble(port=0, seed=1234) as d:
        yield d


@pytest.fixture(autouse=True)
def _fresh_double(double: StripeDouble) -> Iterator[None]:
    double.reset()
    yield
    double.configure_webhooks(None)
    double.reset()


def make_client(double: StripeDouble, *, retries: int = 0, timeout: float = 5.0,
                api_key: str | None = None) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key or double.api_key,
        base_addresses={"api": double.url},
        max_network_retries=retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


@pytest.fixture
def sc(double: StripeDouble) -> stripe.StripeClient:
    # Not named `client`: the repository conftest treats that name as "needs the database".
    return make_client(double)


@pytest.fixture
def raw(double: StripeDouble) -> Iterator[httpx.Client]:
    """Plain HTTP, for asserting headers and shapes the SDK hides."""
    with httpx.Client(base_url=double.url,
                      headers={"Authorization": f"Bearer {double.api_key}"}) as http:
        yield http


def untyped(params: dict[str, Any]) -> Any:
    """Bypass the SDK's TypedDicts to send what a buggy caller would."""
    return cast(Any, params)


def new_customer(sc: stripe.StripeClient, team: str = "team_1") -> stripe.Customer:
    return sc.v1.customers.create(params={"email": f"{team}@example.com", "name": team,
                                          "metadata": {"team_id": team}})


def draft_invoice(sc: stripe.StripeClient, customer: str, **extra: Any) -> stripe.Invoice:
    params: dict[str, Any] = {"customer": customer, "auto_advance": False,
                              "collection_method": "send_invoice", "days_until_due": 14,
                              "currency": "usd", "metadata": {"period": "2024-05"}, **extra}
    return sc.v1.invoices.create(params=untyped(params))


# ---- the happy path -------------------------------------------------------------------------


def test_customer_to_paid_invoice_lifecycle(sc: stripe.StripeClient,
                                            double: StripeDouble) -> None:
    cus = new_customer(sc)
    assert cus.id.startswith("cus_") and cus.object == "customer" and cus.livemode is False
    assert cus.to_dict()["metadata"] == {"team_id": "team_1"}

    inv = draft_invoice(sc, cus.id)
    assert (inv.status, inv.collection_method, inv.total) == ("draft", "send_invoice", 0)
    assert inv.due_date == inv.created + 14 * 86400
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 1500,
                                       "currency": "usd", "description": "cpu-seconds",
                                       "metadata": {"meter": "cpu"}})
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id,
                                       "unit_amount_decimal": Decimal("2.5"), "quantity": 4,
                                       "description": "gb-hours"})

    inv = sc.v1.invoices.retrieve(inv.id)
    assert (inv.total, inv.amount_due, inv.currency) == (1510, 1510, "usd")
    assert inv.lines["object"] == "list" and inv.lines.has_more is False
    assert [line.amount for line in inv.lines.data] == [1500, 10]
    assert inv.lines.data[0].metadata["meter"] == "cpu"

    inv = sc.v1.invoices.finalize_invoice(inv.id)
    assert inv.status == "open"
    assert inv.number is not None and inv.number.endswith("-0001")
    assert inv.status_transitions.finalized_at is not None

    inv = sc.v1.invoices.pay(inv.id)
    assert (inv.status, inv.amount_paid, inv.amount_remaining) == ("paid", 1510, 0)
    assert inv.status_transitions.paid_at is not None

    # Inspection mirrors what the API returned.
    [stored] = double.invoices(customer=cus.id)
    assert stored["status"] == "paid" and stored["number"] == inv.number
    assert len(double.invoice_items(invoice=inv.id)) == 2
    assert [e["type"] for e in double.events(type="invoice.*")] == [
        "invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_succeeded"]
    # Event list via the API is newest first, like Stripe.
    assert sc.v1.events.list(params={"limit": 1}).data[0].type == "invoice.payment_succeeded"


def test_pending_items_are_pulled_in_only_with_include(sc: stripe.StripeClient) -> None:
    cus = new_customer(sc)
    sc.v1.invoice_items.create(params={"customer": cus.id, "amount": 700, "currency": "usd"})
    excluded = draft_invoice(sc, cus.id)
    assert excluded.total == 0
    included = draft_invoice(sc, cus.id, pending_invoice_items_behavior="include")
    assert included.total == 700
    assert sc.v1.invoice_items.list(params={"pending": True}).data == []


def test_decimal_quantities_round_half_up(sc: stripe.StripeClient) -> None:
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    item = sc.v1.invoice_items.create(params={
        "customer": cus.id, "invoice": inv.id, "unit_amount_decimal": Decimal("0.0125"),
        "quantity_decimal": Decimal("1000.5")})  # 12.50625 minor units
    assert item.amount == 13
    assert str(item.quantity_decimal) == "1000.5"


def test_zero_amount_invoice_is_paid_on_finalization(sc: stripe.StripeClient) -> None:
    cus = new_customer(sc)
    inv = sc.v1.invoices.finalize_invoice(draft_invoice(sc, cus.id).id)
    assert (inv.status, inv.amount_due) == ("paid", 0)


def test_expand_customer(sc: stripe.StripeClient) -> None:
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    got = sc.v1.invoices.retrieve(inv.id, params={"expand": ["customer"]})
    assert isinstance(got.customer, stripe.Customer) and got.customer.id == cus.id
    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        sc.v1.invoices.retrieve(inv.id, params={"expand": ["lines.data.bogus"]})


# ---- lists and search -----------------------------------------------------------------------


def test_list_pagination_email_filter_and_search(sc: stripe.StripeClient) -> None:
    ids = [new_customer(sc, f"team_{i}").id for i in range(3)]
    page = sc.v1.customers.list(params={"limit": 2})
    assert [c.id for c in page.data] == [ids[2], ids[1]]  # newest first
    assert page.has_more is True and page.url == "/v1/customers"
    rest = sc.v1.customers.list(params={"limit": 2, "starting_after": ids[1]})
    assert [c.id for c in rest.data] == [ids[0]] and rest.has_more is False
    assert [c.id for c in sc.v1.customers.list().auto_paging_iter()] == ids[::-1]

    assert [c.id for c in sc.v1.customers.list(
        params={"email": "team_1@example.com"}).data] == [ids[1]]

    found = sc.v1.customers.search(params={"query": "metadata['team_id']:'team_2'"})
    assert found["object"] == "search_result" and [c.id for c in found.data] == [ids[2]]
    both = sc.v1.customers.search(
        params={"query": "metadata['team_id']:'team_0' OR email:'team_1@example.com'"})
    assert sorted(c.id for c in both.data) == sorted(ids[:2])
    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.customers.search(params={"query": "team_id:'x'"})
    assert err.value.param == "query"
    # Quoted values may contain keywords; whitespace between clauses means AND.
    odd = sc.v1.customers.create(params={"email": "odd@example.com",
                                         "metadata": {"team_id": "a AND b"}})
    found = sc.v1.customers.search(
        params={"query": "metadata['team_id']:'a AND b' email:'ODD@example.com'"})
    assert [c.id for c in found.data] == [odd.id]


def test_search_is_eventually_consistent_when_configured() -> None:
    now = [1_700_000_000.0]
    with StripeDouble(search_delay=60, clock=lambda: now[0]) as d:
        sc = make_client(d)
        cus = new_customer(sc, "late")
        query: CustomerSearchParams = {"query": "metadata['team_id']:'late'"}
        assert sc.v1.customers.search(params=query).data == []
        now[0] += 61
        assert [c.id for c in sc.v1.customers.search(params=query).data] == [cus.id]


# ---- strictness -----------------------------------------------------------------------------


def test_unknown_parameters_are_rejected_like_stripe(sc: stripe.StripeClient,
                                                      raw: httpx.Client) -> None:
    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.customers.create(params=untyped({"email": "a@b.c", "team_id": "t"}))
    assert (err.value.http_status, err.value.code, err.value.param) == (
        400, "parameter_unknown", "team_id")
    assert str(err.value.user_message) == "Received unknown parameter: team_id"

    # Nested keys are checked against the nested TypedDicts too.
    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.customers.create(params=untyped({"invoice_settings": {"colour": "red"}}))
    assert err.value.param == "invoice_settings[colour]"

    # SDK request options (api_key, idempotency_key, ...) are not wire parameters.
    resp = raw.post("/v1/customers", data={"idempotency_key": "x"})
    body = resp.json()
    assert resp.status_code == 400
    assert body["error"]["code"] == "parameter_unknown"
    assert set(body["error"]) >= {"type", "code", "message", "param"}
    assert body["error"]["type"] == "invalid_request_error"

    # Every endpoint is checked, also actions with (almost) no parameters.
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: force"):
        sc.v1.invoices.finalize_invoice(inv.id, params=untyped({"force": True}))
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: status"):
        sc.v1.invoice_items.list(params=untyped({"status": "open"}))


def test_missing_and_malformed_parameters(sc: stripe.StripeClient) -> None:
    cus = new_customer(sc)
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"amount": 100, "currency": "usd"}, "customer", "parameter_missing"),
        ({"customer": cus.id, "currency": "usd"}, "amount", "parameter_missing"),
        ({"customer": cus.id, "amount": "12x"}, "amount", "parameter_invalid_integer"),
        ({"customer": cus.id, "amount": 1, "unit_amount_decimal": "1"}, "amount",
         "parameters_exclusive"),
        ({"customer": "cus_nope", "amount": 1}, "customer", "resource_missing"),
        ({"customer": cus.id, "amount": 1, "discountable": "maybe"}, "discountable", None),
    ]
    for params, param, code in cases:
        with pytest.raises(stripe.InvalidRequestError) as err:
            sc.v1.invoice_items.create(params=untyped(params))
        assert (err.value.http_status, err.value.param, err.value.code) == (400, param, code)

    with pytest.raises(stripe.InvalidRequestError, match="must be one of") as err:
        sc.v1.invoices.create(params=untyped({"customer": cus.id,
                                              "collection_method": "by_carrier_pigeon"}))
    assert err.value.param == "collection_method"
    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.invoices.create(params={"customer": cus.id, "days_until_due": 7})
    assert err.value.param == "days_until_due"  # only valid for send_invoice
    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.customers.search(params=untyped({}))
    assert (err.value.param, err.value.code) == ("query", "parameter_missing")
    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.customers.retrieve("cus_missing")
    assert (err.value.http_status, err.value.code) == (404, "resource_missing")


def test_authentication_is_required(double: StripeDouble) -> None:
    with httpx.Client(base_url=double.url) as http:
        assert http.get("/v1/customers").status_code == 401
        live = http.get("/v1/customers", headers={"Authorization": "Bearer sk_live_123456789"})
        assert live.status_code == 401
    with pytest.raises(stripe.AuthenticationError):
        make_client(double, api_key="pk_test_nope").v1.customers.list()


# ---- invoice state machine ------------------------------------------------------------------


def test_invoice_state_machine_is_enforced(sc: stripe.StripeClient,
                                           double: StripeDouble) -> None:
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 100})
    with pytest.raises(stripe.InvalidRequestError, match="void"):
        sc.v1.invoices.void_invoice(inv.id)  # drafts are deleted, not voided
    sc.v1.invoices.finalize_invoice(inv.id)

    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.invoices.finalize_invoice(inv.id)
    assert err.value.code == "invoice_not_editable"
    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 1})
    assert (err.value.code, err.value.param) == ("invoice_not_editable", "invoice")
    with pytest.raises(stripe.InvalidRequestError) as err:
        sc.v1.invoices.update(inv.id, params={"collection_method": "charge_automatically"})
    assert err.value.code == "invoice_not_editable"
    # Metadata stays editable after finalization.
    updated = sc.v1.invoices.update(inv.id, params={"metadata": {"synced": "1"}})
    assert updated.to_dict()["metadata"] == {"period": "2024-05", "synced": "1"}
    with pytest.raises(stripe.InvalidRequestError, match="delete"):
        sc.v1.invoices.delete(inv.id)

    assert sc.v1.invoices.mark_uncollectible(inv.id).status == "uncollectible"
    voided = sc.v1.invoices.void_invoice(inv.id)
    assert voided.status == "void" and voided.status_transitions.voided_at is not None
    with pytest.raises(stripe.InvalidRequestError, match="voided"):
        sc.v1.invoices.pay(inv.id)
    with pytest.raises(stripe.InvalidRequestError):
        sc.v1.invoices.mark_uncollectible(inv.id)

    sent = draft_invoice(sc, cus.id)
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": sent.id, "amount": 9})
    sc.v1.invoices.finalize_invoice(sent.id)
    sc.v1.invoices.send_invoice(sent.id)
    assert double.events(type="invoice.sent")[0]["data"]["object"]["id"] == sent.id


def test_invoice_item_limit_is_250(sc: stripe.StripeClient, double: StripeDouble,
                                   raw: httpx.Client) -> None:
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    # Bulk-fill over plain HTTP (the SDK's per-request overhead would dominate the test).
    for i in range(249):
        resp = raw.post("/v1/invoiceitems",
                        data={"customer": cus.id, "invoice": inv.id, "amount": str(i)})
        assert resp.status_code == 200
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 249})
    with pytest.raises(stripe.InvalidRequestError, match="at most 250") as err:
        sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 1})
    assert (err.value.http_status, err.value.param) == (400, "invoice")
    assert len(double.invoice_items(invoice=inv.id)) == 250

    got = sc.v1.invoices.retrieve(inv.id)
    assert got.total == sum(range(250))
    assert got.lines.has_more is True and len(got.lines.data) == 10
    lines = list(sc.v1.invoices.line_items.list(inv.id, params={"limit": 100})
                 .auto_paging_iter())
    assert len(lines) == 250


def test_declined_payment_records_the_attempt(sc: stripe.StripeClient,
                                              double: StripeDouble) -> None:
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id, collection_method="charge_automatically",
                        days_until_due=None)
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 500})
    sc.v1.invoices.finalize_invoice(inv.id)
    double.set_payment_outcome("decline", customer=cus.id)
    with pytest.raises(stripe.CardError) as err:
        sc.v1.invoices.pay(inv.id)
    assert (err.value.http_status, err.value.code) == (402, "card_declined")
    after = sc.v1.invoices.retrieve(inv.id)
    assert (after.status, after.attempt_count, after.attempted) == ("open", 1, True)
    assert len(double.events(type="invoice.payment_failed")) == 1
    assert sc.v1.invoices.pay(inv.id, params={"paid_out_of_band": True}).status == "paid"


# ---- idempotency ----------------------------------------------------------------------------


def test_idempotent_replay_and_conflicts(sc: stripe.StripeClient, double: StripeDouble,
                                         raw: httpx.Client) -> None:
    params: Any = {"email": "idem@example.com"}
    first = sc.v1.customers.create(params=params, options={"idempotency_key": "k-1"})
    again = sc.v1.customers.create(params=params, options={"idempotency_key": "k-1"})
    assert again.id == first.id
    assert len(double.customers(email="idem@example.com")) == 1
    assert double.idempotency_key_counts()["k-1"] == 2

    replay = raw.post("/v1/customers", data=params, headers={"Idempotency-Key": "k-1"})
    assert replay.status_code == 200 and replay.json()["id"] == first.id
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Original-Request"] == double.requests(idempotency_key="k-1")[0].request_id

    with pytest.raises(stripe.IdempotencyError) as err:
        sc.v1.customers.create(params={"email": "other@example.com"},
                               options={"idempotency_key": "k-1"})
    assert err.value.http_status == 400
    assert err.value.error is not None and err.value.error.type == "idempotency_error"
    with pytest.raises(stripe.IdempotencyError, match="same endpoint"):
        sc.v1.invoices.create(params={"customer": first.id}, options={"idempotency_key": "k-1"})

    # Keys are scoped per API key.
    other = make_client(double, api_key="sk_test_other_account")
    assert other.v1.customers.create(params=params,
                                     options={"idempotency_key": "k-1"}).id != first.id


def test_validation_failures_are_not_stored(sc: stripe.StripeClient) -> None:
    cus = new_customer(sc)
    with pytest.raises(stripe.InvalidRequestError):
        sc.v1.invoice_items.create(params=untyped({"customer": cus.id, "amount": "oops"}),
                                   options={"idempotency_key": "fix-me"})
    fixed = sc.v1.invoice_items.create(params={"customer": cus.id, "amount": 5},
                                       options={"idempotency_key": "fix-me"})
    assert fixed.amount == 5


# ---- faults ---------------------------------------------------------------------------------


def test_lost_response_then_retry_with_same_key_returns_original(
        sc: stripe.StripeClient, double: StripeDouble) -> None:
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    params: Any = {"customer": cus.id, "invoice": inv.id, "amount": 4200}
    double.fail_next(1, "api_error", after=True, path="/v1/invoiceitems")
    with pytest.raises(stripe.APIError) as err:
        sc.v1.invoice_items.create(params=params, options={"idempotency_key": "item-1"})
    assert err.value.http_status == 500
    # The item exists although the caller saw a 500 ...
    [created] = double.invoice_items(invoice=inv.id)
    # ... and the retry with the same key returns it instead of a duplicate.
    retried = sc.v1.invoice_items.create(params=params, options={"idempotency_key": "item-1"})
    assert retried.id == created["id"]
    assert len(double.invoice_items(invoice=inv.id)) == 1
    # Without the key, the same lost response would have produced a duplicate.
    double.fail_next(1, "api_error", after=True, path="/v1/invoiceitems")
    with pytest.raises(stripe.APIError):
        sc.v1.invoice_items.create(params=params, options={"idempotency_key": "item-2"})
    sc.v1.invoice_items.create(params=params, options={"idempotency_key": "item-3"})
    assert len(double.invoice_items(invoice=inv.id)) == 3


def test_500_before_execution_stores_nothing(sc: stripe.StripeClient,
                                             double: StripeDouble) -> None:
    double.fail_next(1, "api_error", path="/v1/customers", method="POST")
    with pytest.raises(stripe.APIError):
        sc.v1.customers.create(params={"email": "x@example.com"},
                               options={"idempotency_key": "c-1"})
    assert double.customers() == []
    created = sc.v1.customers.create(params={"email": "x@example.com"},
                                     options={"idempotency_key": "c-1"})
    assert [c["id"] for c in double.customers()] == [created.id]
    [failed, ok] = double.requests(idempotency_key="c-1")
    assert (failed.status, failed.fault, ok.status, ok.replayed) == (500, "api_error", 200, False)


def test_sdk_automatic_retries_are_exactly_once(double: StripeDouble) -> None:
    sc = make_client(double, retries=2)
    double.fail_next(1, "api_error", after=True, path="/v1/customers")
    cus = sc.v1.customers.create(params={"email": "retry@example.com"})
    assert [c["id"] for c in double.customers()] == [cus.id]
    [first, second] = double.requests(path="/v1/customers")
    # The SDK generated one Idempotency-Key and reused it for its retry.
    assert first.idempotency_key is not None
    assert first.idempotency_key == second.idempotency_key and second.replayed


def test_rate_limit_carries_retry_after(sc: stripe.StripeClient, double: StripeDouble) -> None:
    double.fail_next(1, "rate_limit", retry_after=7)
    with pytest.raises(stripe.RateLimitError) as err:
        sc.v1.customers.list()
    # RateLimitError does not copy `code` onto itself; the parsed error body has it.
    assert err.value.http_status == 429
    assert err.value.error is not None and err.value.error.code == "rate_limit"
    assert err.value.headers is not None and err.value.headers["Retry-After"] == "7"
    assert sc.v1.customers.list().data == []  # only the next request was affected


def test_hang_after_create_then_retry_replays(double: StripeDouble) -> None:
    quick = make_client(double, timeout=0.3)
    double.fail_next(1, "timeout", after=True, hang_seconds=2.0, path="/v1/customers")
    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        quick.v1.customers.create(params={"email": "slow@example.com"},
                                  options={"idempotency_key": "slow-1"})
    assert time.monotonic() - started < 1.5  # the client gave up long before the answer
    again = quick.v1.customers.create(params={"email": "slow@example.com"},
                                      options={"idempotency_key": "slow-1"})
    assert [c["id"] for c in double.customers()] == [again.id]


def test_dropped_connection(sc: stripe.StripeClient, double: StripeDouble) -> None:
    double.fail_next(1, "disconnect", path="/v1/invoices")
    with pytest.raises(stripe.APIConnectionError):
        sc.v1.invoices.list()
    assert sc.v1.invoices.list().data == []


def test_random_faults_are_reproducible(double: StripeDouble, raw: httpx.Client) -> None:
    def pattern() -> list[int]:
        double.reset()
        double.seed(42)
        double.fail_randomly(0.5, "api_error", path="/v1/events")
        return [raw.get("/v1/events").status_code for _ in range(20)]

    first = pattern()
    assert set(first) == {200, 500}
    assert pattern() == first
    assert double.request_counts()["GET /v1/events"] == 20


def test_control_endpoint_injects_faults_and_pays(sc: stripe.StripeClient,
                                                  double: StripeDouble,
                                                  raw: httpx.Client) -> None:
    resp = raw.post("/_double/faults", json={"kind": "api_error", "count": 2,
                                             "path": "/v1/invoices*"})
    assert resp.status_code == 200 and resp.json()["remaining"] == 2
    assert raw.get("/v1/customers").status_code == 200  # path filter
    assert [raw.get("/v1/invoices").status_code for _ in range(3)] == [500, 500, 200]
    assert raw.post("/_double/faults", json={"kind": "nope"}).status_code == 400
    raw.post("/_double/faults", json={"kind": "rate_limit"})
    assert raw.delete("/_double/faults").json() == {"cleared": True}
    assert raw.get("/v1/invoices").status_code == 200

    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 10})
    event = raw.post(f"/_double/invoices/{inv.id}/pay").json()
    assert (event["type"], event["data"]["object"]["status"]) == ("invoice.paid", "paid")
    assert raw.post("/_double/invoices/in_nope/pay").status_code == 404


def test_stop_and_start_keep_state_and_port() -> None:
    with StripeDouble() as d:
        sc = make_client(d)
        cus = new_customer(sc)
        port = d.port
        d.stop()
        with pytest.raises(stripe.APIConnectionError):
            sc.v1.customers.retrieve(cus.id)
        d.start()
        assert d.port == port
        assert sc.v1.customers.retrieve(cus.id).id == cus.id


# ---- webhooks -------------------------------------------------------------------------------


class Receiver:
    """A minimal webhook endpoint that answers with scripted statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((body, self.headers["Stripe-Signature"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def events(self, secret: str) -> list[Any]:
        return [stripe.Webhook.construct_event(body, sig, secret)
                for body, sig in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_signed_event_is_accepted_by_the_sdk(sc: stripe.StripeClient,
                                             double: StripeDouble) -> None:
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    signed = double.build_signed_event("invoice.paid", invoice_id=inv.id)
    event = stripe.Webhook.construct_event(signed.payload, signed.signature,
                                           double.webhook_secret)
    assert event.id.startswith("evt_") and event.type == "invoice.paid"
    assert event.api_version == stripe.api_version
    assert event.data.object["id"] == inv.id and event["object"] == "event"

    tampered = signed.payload.replace(inv.id.encode(), b"in_forged")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, signed.signature, double.webhook_secret)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(signed.payload, signed.signature, "whsec_wrong")
    stale = double.build_signed_event("invoice.paid", invoice_id=inv.id,
                                      timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(stale.payload, stale.signature, double.webhook_secret)
    # The module-level helper produces the same scheme.
    assert sign_payload(signed.payload, double.webhook_secret,
                        int(signed.signature.split(",")[0][2:])) == signed.signature


def test_webhooks_are_delivered_signed_and_retried(sc: stripe.StripeClient,
                                                   double: StripeDouble,
                                                   receiver: Receiver) -> None:
    double.configure_webhooks(receiver.url, events=["invoice.*"], retry_delay=0.01)
    receiver.statuses = [500, 503]  # the first event needs three attempts
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 300})
    sc.v1.invoices.finalize_invoice(inv.id)
    paid = double.pay_invoice(inv.id)
    assert double.wait_for_webhooks(5)

    events = receiver.events(double.webhook_secret)
    assert [e.type for e in events] == [
        "invoice.created", "invoice.created", "invoice.created", "invoice.finalized",
        "invoice.paid", "invoice.payment_succeeded"]
    assert events[4].id == paid["id"] and events[4].data.object["status"] == "paid"
    attempts = [d.attempt for d in double.webhook_deliveries() if d.event_type == "invoice.created"]
    assert attempts == [1, 2, 3]


def test_webhooks_can_arrive_out_of_order(sc: stripe.StripeClient, double: StripeDouble,
                                          receiver: Receiver) -> None:
    double.configure_webhooks(receiver.url, events=["invoice.finalized", "invoice.paid",
                                                    "invoice.payment_failed"])
    cus = new_customer(sc)
    inv = draft_invoice(sc, cus.id)
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 300})
    double.pause_webhooks()
    double.finalize_invoice(inv.id)
    double.fail_payment(inv.id)
    double.pay_invoice(inv.id)
    assert receiver.received == []
    double.release_webhooks(order="reverse")
    assert double.wait_for_webhooks(5)
    events = receiver.events(double.webhook_secret)
    assert [e.type for e in events] == ["invoice.paid", "invoice.payment_failed",
                                        "invoice.finalized"]
    # Each carries the snapshot from when it happened, as Stripe's events do.
    assert [e.data.object["status"] for e in events] == ["paid", "open", "open"]

    # Events recorded without delivery can be sent explicitly, e.g. as a duplicate.
    voided = draft_invoice(sc, cus.id)
    sc.v1.invoice_items.create(params={"customer": cus.id, "invoice": voided.id, "amount": 1})
    sc.v1.invoices.finalize_invoice(voided.id)  # delivered in the background
    assert double.wait_for_webhooks(5)
    event = double.void_invoice(voided.id, deliver=False)
    [delivery] = double.deliver_event(event["id"])
    assert delivery.status == 200
    assert receiver.events(double.webhook_secret)[-1].type == "invoice.voided"
