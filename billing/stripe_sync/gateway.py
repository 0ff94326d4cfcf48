"""The one door to Stripe: the only module of the project that imports `stripe`.

Everything else speaks in the small frozen values below (`RemoteCustomer`, `RemoteInvoice`,
`RemoteItem`) and catches `StripeFailure`, so the sync logic is testable and never depends on
the SDK's object model. The SDK's own retries are off (`max_network_retries=0`): the sync
retries itself, always with the same deterministic idempotency key, and decides when to give
up and schedule a later attempt instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import stripe

from metering.config import Settings
from metering.core.clock import utc_now
from metering.errors import InvalidSignature

FailureKind = Literal["transient", "rate_limited", "conflict", "declined", "invalid", "auth"]

# Stripe answers a request in well under a second; 30 s covers its slowest list calls while
# keeping a stuck connection from holding a worker for the SDK's default 80 s.
DEFAULT_TIMEOUT_S = 30.0
PAGE_SIZE = 100


class StripeNotConfigured(Exception):
    """No API key: the sync cannot run (the webhook needs only the signing secret)."""


class StripeFailure(Exception):
    """A Stripe call failed. `retryable` says whether the same call may succeed later."""

    def __init__(self, message: str, *, kind: FailureKind, status: int | None = None,
                 code: str | None = None, retry_after: float | None = None) -> None:  # float-ok
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in ("transient", "rate_limited", "conflict")

    @property
    def retry_now(self) -> bool:
        """Worth retrying within the same run (a conflict needs time or a changed input)."""
        return self.kind in ("transient", "rate_limited")


class CardDeclined(StripeFailure):
    """`pay` was refused by the customer's bank: a payment outcome, not a sync failure."""


@dataclass(frozen=True, slots=True)
class RemoteCustomer:
    id: str
    created: int  # unix seconds
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RemoteInvoice:
    id: str
    status: str  # draft | open | paid | void | uncollectible
    total: int  # minor units
    currency: str
    customer: str
    number: str | None
    metadata: Mapping[str, str]
    attempt_count: int
    paid_at: datetime | None
    voided_at: datetime | None
    marked_uncollectible_at: datetime | None


@dataclass(frozen=True, slots=True)
class RemoteItem:
    id: str
    amount: int
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class DraftInvoice:
    """What a draft Stripe invoice is created with (identical on every retry, by design:
    Stripe refuses an idempotency key reused with other parameters)."""

    customer: str
    currency: str
    collection_method: Literal["charge_automatically", "send_invoice"]
    days_until_due: int | None
    description: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class DraftItem:
    customer: str
    invoice: str
    amount: int  # minor units; negative for credits
    currency: str
    description: str
    metadata: Mapping[str, str]
    period: tuple[int, int] | None = None  # the line's service period, unix seconds


def _when(ts: int | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    raw = value.to_dict() if isinstance(value, stripe.StripeObject) else dict(value)
    return {str(k): str(v) for k, v in raw.items()}


def _invoice(obj: stripe.Invoice) -> RemoteInvoice:
    transitions = obj.status_transitions
    customer = obj.customer
    return RemoteInvoice(
        id=str(obj.id),
        status=str(obj.status),
        total=int(obj.total),
        currency=str(obj.currency),
        customer=customer if isinstance(customer, str) else str(getattr(customer, "id", "")),
        number=obj.number,
        metadata=_metadata(obj.metadata),
        attempt_count=int(obj.attempt_count or 0),
        paid_at=_when(transitions.paid_at) if transitions else None,
        voided_at=_when(transitions.voided_at) if transitions else None,
        marked_uncollectible_at=_when(transitions.marked_uncollectible_at) if transitions
        else None,
    )


def _retry_after(exc: stripe.StripeError) -> float | None:  # float-ok
    headers = exc.headers or {}
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(float(value), 0.0)  # float-ok
            except ValueError:
                return None
    return None


def _failure(exc: stripe.StripeError) -> StripeFailure:
    """Translate an SDK error, keeping Stripe's message (it never contains our secrets: an
    authentication error shows the key masked) and request id for the visible sync_error."""
    status = exc.http_status
    code = exc.code or (exc.error.code if exc.error is not None else None)
    message = f"{type(exc).__name__}"
    if status is not None:
        message += f" ({status}{', ' + code if code else ''})"
    message += f": {exc.user_message or str(exc) or 'no message'}"
    if exc.request_id:
        message += f" [request {exc.request_id}]"
    kind: FailureKind
    if isinstance(exc, stripe.CardError):
        return CardDeclined(message, kind="declined", status=status, code=code)
    if isinstance(exc, stripe.RateLimitError):
        kind = "rate_limited"
    elif isinstance(exc, stripe.APIConnectionError) or (status is not None and status >= 500):
        kind = "transient"
    elif isinstance(exc, stripe.IdempotencyError) or status == 409:
        # A key reused with other parameters, or Stripe's lock_timeout on a busy object.
        kind = "conflict"
    elif isinstance(exc, (stripe.AuthenticationError, stripe.PermissionError)):
        kind = "auth"
    elif status == 429:
        kind = "rate_limited"
    else:
        kind = "invalid"
    return StripeFailure(message, kind=kind, status=status, code=code,
                         retry_after=_retry_after(exc))


def _quoted(value: str) -> str:
    """A value for Stripe's search language, single-quoted with quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class StripeGateway:
    """Typed calls to Stripe. Every mutating call takes the caller's idempotency key."""

    def __init__(self, api_key: str, *, api_base: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:  # float-ok
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else {},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout_s),
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S,  # float-ok
                      ) -> StripeGateway:
        if not settings.stripe_api_key:
            raise StripeNotConfigured("METERING_STRIPE_API_KEY is not set")
        return cls(settings.stripe_api_key, api_base=settings.stripe_api_base,
                   timeout_s=timeout_s)

    # ---- customers ---------------------------------------------------------------------

    def find_customers(self, team_id: str) -> list[RemoteCustomer]:
        """Customers whose metadata names the team (Search is eventually consistent: a
        customer created seconds ago may be missing; the idempotency key covers that)."""
        try:
            found = self._client.v1.customers.search(
                params={"query": f"metadata['team_id']:{_quoted(team_id)}", "limit": 10})
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return [RemoteCustomer(str(c.id), int(c.created), _metadata(c.metadata))
                for c in found.data]

    def create_customer(self, *, team_id: str, email: str | None, name: str | None,
                        idempotency_key: str) -> RemoteCustomer:
        params: stripe.params.CustomerCreateParams = {"metadata": {"team_id": team_id}}
        if email:
            params["email"] = email
        if name:
            params["name"] = name
        try:
            customer = self._client.v1.customers.create(
                params=params, options={"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return RemoteCustomer(str(customer.id), int(customer.created), _metadata(customer.metadata))

    # ---- invoices ----------------------------------------------------------------------

    def find_invoices(self, metadata: Mapping[str, str]) -> list[RemoteInvoice]:
        clauses = " AND ".join(f"metadata[{_quoted(k)}]:{_quoted(v)}"
                               for k, v in sorted(metadata.items()))
        try:
            found = self._client.v1.invoices.search(params={"query": clauses, "limit": 10})
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return [_invoice(i) for i in found.data]

    def create_invoice(self, draft: DraftInvoice, *, idempotency_key: str) -> RemoteInvoice:
        params: stripe.params.InvoiceCreateParams = {
            "customer": draft.customer,
            "currency": draft.currency,
            "collection_method": draft.collection_method,
            # We finalize and collect explicitly once every item is attached; auto-advance
            # would let Stripe finalize a half-built draft about an hour after creation.
            "auto_advance": False,
            # Never sweep in stray pending items of the customer: the invoice is exactly ours.
            "pending_invoice_items_behavior": "exclude",
            "description": draft.description,
            "metadata": dict(draft.metadata),
        }
        if draft.days_until_due is not None:
            params["days_until_due"] = draft.days_until_due
        try:
            invoice = self._client.v1.invoices.create(
                params=params, options={"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return _invoice(invoice)

    def retrieve_invoice(self, invoice_id: str) -> RemoteInvoice:
        try:
            return _invoice(self._client.v1.invoices.retrieve(invoice_id))
        except stripe.StripeError as exc:
            raise _failure(exc) from exc

    def list_items(self, invoice_id: str) -> list[RemoteItem]:
        """Every invoice item attached to a Stripe invoice (paged)."""
        items: list[RemoteItem] = []
        params: stripe.params.InvoiceItemListParams = {"invoice": invoice_id,
                                                       "limit": PAGE_SIZE}
        try:
            while True:
                page = self._client.v1.invoice_items.list(params=params)
                items.extend(RemoteItem(str(i.id), int(i.amount), _metadata(i.metadata))
                             for i in page.data)
                if not page.has_more or not page.data:
                    return items
                params["starting_after"] = str(page.data[-1].id)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc

    def create_item(self, item: DraftItem, *, idempotency_key: str) -> RemoteItem:
        params: stripe.params.InvoiceItemCreateParams = {
            "customer": item.customer,
            "invoice": item.invoice,
            "amount": item.amount,
            "currency": item.currency,
            "description": item.description,
            "metadata": dict(item.metadata),
        }
        if item.period is not None:
            params["period"] = {"start": item.period[0], "end": item.period[1]}
        try:
            created = self._client.v1.invoice_items.create(
                params=params, options={"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return RemoteItem(str(created.id), int(created.amount), _metadata(created.metadata))

    def finalize_invoice(self, invoice_id: str, *, idempotency_key: str) -> RemoteInvoice:
        try:
            return _invoice(self._client.v1.invoices.finalize_invoice(
                invoice_id, params={"auto_advance": False},
                options={"idempotency_key": idempotency_key}))
        except stripe.StripeError as exc:
            raise _failure(exc) from exc

    def pay_invoice(self, invoice_id: str, *, idempotency_key: str) -> RemoteInvoice:
        """Charge the customer's default payment method now; `CardDeclined` on a decline."""
        try:
            return _invoice(self._client.v1.invoices.pay(
                invoice_id, options={"idempotency_key": idempotency_key}))
        except stripe.StripeError as exc:
            raise _failure(exc) from exc

    def send_invoice(self, invoice_id: str, *, idempotency_key: str) -> RemoteInvoice:
        try:
            return _invoice(self._client.v1.invoices.send_invoice(
                invoice_id, options={"idempotency_key": idempotency_key}))
        except stripe.StripeError as exc:
            raise _failure(exc) from exc


def verify_event(payload: bytes, signature: str | None, secret: str,
                 tolerance_s: int) -> dict[str, Any]:
    """Verify a webhook's `Stripe-Signature` (HMAC-SHA256 over "t.payload", timestamp within
    `tolerance_s`) and answer the event as a plain dict."""
    if not signature:
        raise InvalidSignature("missing Stripe-Signature header")
    # Stripe's check refuses a stamp too old; one from the future is as suspect (a replay
    # prepared in advance), so the tolerance applies both ways.
    stamps = [part[2:] for part in signature.split(",") if part.strip().startswith("t=")]
    if stamps and stamps[0].strip().isdigit():
        ahead = int(stamps[0].strip()) - int(utc_now().timestamp())
        if ahead > tolerance_s:
            raise InvalidSignature(
                f"timestamp is {ahead} s in the future; the tolerance is {tolerance_s} s")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance=tolerance_s)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature(str(exc.user_message or exc)) from exc
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidSignature("signed payload is not JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) \
            or not isinstance(event.get("type"), str):
        raise InvalidSignature("signed payload is not a Stripe event")
    return event
