"""Stripe test double: a real HTTP server that behaves like Stripe's v1 API where billing sync cares.

There is no network in tests or benchmarks, so the billing code talks HTTP to this server through
the official `stripe` package (`StripeClient(key, base_addresses={"api": double.url})` or the global
`stripe.api_base`). Faking at the HTTP boundary, instead of mocking the SDK, means the SDK's own
encoding, retries, idempotency keys and error mapping are exercised exactly as in production.

What it emulates (the subset a usage-billing sync needs):

* Customers (create/retrieve/update/delete/list/search), InvoiceItems (create/retrieve/update/
  delete/list), Invoices (create/retrieve/update/delete/list/search/lines, finalize, pay, void,
  mark_uncollectible, send) and Events (list/retrieve), in Stripe's JSON shapes.
* Form-encoded request bodies and query strings (`a[b]=c`, `lines[0][x]=y`, `expand[]=x`).
* Parameter strictness derived from the SDK's own `stripe.params.*Params` TypedDicts: unknown
  parameters (also nested ones) -> `parameter_unknown`, missing required ones ->
  `parameter_missing`, malformed integers/booleans/decimals/enums -> 400, like Stripe.
* The invoice state machine (draft -> open -> paid | void | uncollectible), 250 items/invoice.
* `Idempotency-Key` semantics: replay with `Idempotent-Replayed: true`, `idempotency_error` on
  reuse with other parameters or another endpoint, keys scoped per API key, 24 h retention,
  validation failures are not stored.
* Fault injection (500, 429 + Retry-After, hangs, dropped connections), per path/method, for the
  next N requests or a seeded random fraction, before or *after* the request took effect.
* Events for every state change, delivered as signed webhooks (`Stripe-Signature: t=..,v1=..`)
  with retries on non-2xx, which can be held back and released out of order.

Start it with `StripeDouble(port=0)` (serves immediately in a background thread; also a context
manager) or standalone with `python -m tests.stripe_double.server --port 12111`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import fnmatch
import hashlib
import hmac
import random
import re
import socket
import string
import sys
import threading
import time
import types
import typing
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
import stripe
import stripe.params
import typing_extensions

JSON = dict[str, Any]
_T = typing.TypeVar("_T")
FaultKind = Literal["api_error", "rate_limit", "timeout", "disconnect"]
FAULT_KINDS: tuple[str, ...] = typing.get_args(FaultKind)
ReleaseOrder = Literal["fifo", "reverse", "shuffle"]
PaymentOutcome = Literal["succeed", "decline"]

# The version the installed SDK pins; events carry it as `api_version` like real Stripe does.
API_VERSION: str = stripe.api_version
DEFAULT_API_KEY = "sk_test_stripedouble"
MAX_INVOICE_ITEMS = 250
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
_ALNUM = string.ascii_letters + string.digits
# Keys of the SDK's RequestOptions (api_key, idempotency_key, ...): client-side options that the
# SDK strips before encoding, so they are never legitimate wire parameters.
_REQUEST_OPTION_KEYS: frozenset[str] = frozenset(stripe.RequestOptions.__annotations__)

# Parameters Stripe accepts but whose effect on amounts/state the double does not model. Rejecting
# them loudly beats silently returning totals that real Stripe would compute differently.
_UNMODELLED_PARAMS: frozenset[str] = frozenset({
    "price_data", "pricing", "discounts", "tax_rates", "default_tax_rates", "automatic_tax",
    "subscription", "from_invoice", "shipping_cost", "balance", "cash_balance", "test_clock",
    "customer_account", "transfer_data", "on_behalf_of",
})


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A Stripe-shaped API error; also raised by the Python helpers on invalid transitions."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        store: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        # Stripe saves idempotent results only once an endpoint started executing: validation
        # and auth failures are not saved, so a corrected retry with the same key can succeed.
        self.store = store
        self.extra = dict(extra or {})

    def body(self) -> JSON:
        err: JSON = {"type": self.type, "code": self.code, "message": self.message,
                     "param": self.param}
        if self.code:
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        err.update(self.extra)
        return {"error": err}


def _validation_error(message: str, *, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code, store=False)


def _missing(param: str) -> ApiError:
    return _validation_error(f"Missing required param: {param}.", param=param,
                             code="parameter_missing")


def _no_such(kind: str, obj_id: str, *, param: str, status: int = 400) -> ApiError:
    # Stripe answers 404 for an unknown id in the URL and 400 for one passed as a parameter.
    return ApiError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def _not_editable(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invoice_not_editable", param=param)


# --------------------------------------------------------------------------------------------
# Wire format: form decoding
# --------------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")


def decode_form(pairs: Sequence[tuple[str, str]]) -> JSON:
    """Decode Stripe/Rack-style bracketed form pairs into nested dicts.

    Arrays stay dicts keyed "0", "1", ... here: only the TypedDict knows whether `metadata[0]`
    is a list element or a metadata key, so list conversion happens during validation.
    """
    root: JSON = {}
    for raw_key, value in pairs:
        match = _KEY_RE.match(raw_key)
        if match is None:
            raise _validation_error(f"Invalid parameter name: {raw_key}", param=raw_key)
        segments = [match.group(1), *_SEGMENT_RE.findall(match.group(2))]
        node = root
        for depth, segment in enumerate(segments):
            # `a[]=x` appends: the next free index.
            key = segment if segment != "" else str(len(node))
            if depth == len(segments) - 1:
                if isinstance(node.get(key), dict):
                    raise _validation_error(f"Invalid hash: {raw_key}", param=raw_key)
                node[key] = value
            else:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise _validation_error(f"Invalid hash: {raw_key}", param=raw_key)
                node = child
    return root


# --------------------------------------------------------------------------------------------
# Parameter validation against the SDK's TypedDicts
# --------------------------------------------------------------------------------------------

_WRAPPERS: frozenset[Any] = frozenset({
    typing.NotRequired, typing.Required, typing_extensions.NotRequired,
    typing_extensions.Required,
})
_LITERALS: frozenset[Any] = frozenset({typing.Literal, typing_extensions.Literal})
_UNIONS: frozenset[Any] = frozenset({typing.Union, types.UnionType})
_INT_RE = re.compile(r"^-?\d+$")
# Exponent notation is accepted because the SDK sends str(Decimal), e.g. "1E-8".
_DECIMAL_RE = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@lru_cache(maxsize=4096)
def _eval_forward(expr: str, module: str) -> Any:
    # The generated params use string annotations ("Literal['']|List[FooParamsBar]") resolvable
    # in their defining module; evaluating lazily per key sidesteps get_type_hints() failing on
    # RequestOptions' TYPE_CHECKING-only imports.
    return eval(expr, vars(sys.modules[module]))


def _resolve(tp: Any, module: str) -> Any:
    if isinstance(tp, str):
        return _eval_forward(tp, module)
    if isinstance(tp, typing.ForwardRef):
        return _eval_forward(tp.__forward_arg__, module)
    return tp


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "__required_keys__")


def _is_map(origin: Any) -> bool:
    # UntypedStripeObject[str] (metadata) is a map too, though not a Mapping subclass.
    return isinstance(origin, type) and issubclass(origin, (Mapping, stripe.StripeObject))


def _is_list(origin: Any) -> bool:
    return origin in (list, Sequence, tuple)


def _literal_values(tp: Any, module: str) -> list[Any] | None:
    tp = _resolve(tp, module)
    return list(typing.get_args(tp)) if typing.get_origin(tp) in _LITERALS else None


def _admits_empty(tp: Any, module: str) -> bool:
    """Whether `""` (Stripe's "unset this") is acceptable for a field of type `tp`."""
    tp = _resolve(tp, module)
    origin = typing.get_origin(tp)
    if origin in _WRAPPERS:
        return _admits_empty(typing.get_args(tp)[0], module)
    if origin in _UNIONS:
        return any(_admits_empty(alt, module) for alt in typing.get_args(tp))
    if origin in _LITERALS:
        return "" in typing.get_args(tp)
    return tp is str or tp is Any


def _shape_rank(tp: Any, value: Any, module: str) -> int:
    """Order union alternatives so the one matching the value's shape is tried (and blamed) first."""
    tp = _resolve(tp, module)
    origin = typing.get_origin(tp)
    if isinstance(value, dict):
        structured = _is_typeddict(tp) or _is_map(origin) or _is_list(origin)
        return 0 if structured else 1
    return 1 if _is_typeddict(tp) or _is_map(origin) or _is_list(origin) else 0


def coerce_params(params_type: type[Any], raw: JSON) -> JSON:
    """Validate decoded form params against an SDK TypedDict and convert wire strings to values."""
    return _coerce_typeddict(params_type, raw, prefix="", top_level=True)


def _coerce_typeddict(td: type[Any], value: Any, *, prefix: str, top_level: bool = False) -> JSON:
    if not isinstance(value, dict):
        raise _validation_error(f"Invalid hash: {prefix}", param=prefix)
    module = td.__module__
    annotations: dict[str, Any] = dict(td.__annotations__)
    if top_level:
        for key in _REQUEST_OPTION_KEYS:
            annotations.pop(key, None)

    def full(key: str) -> str:
        return f"{prefix}[{key}]" if prefix else key

    unknown = sorted(full(k) for k in value if k not in annotations)
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise _validation_error(f"Received unknown parameter{plural}: {', '.join(unknown)}",
                                param=unknown[0], code="parameter_unknown")
    required = [k for k in annotations if k in td.__required_keys__]
    for key in required:
        if key not in value:
            raise _missing(full(key))
    out: JSON = {}
    for key, raw in value.items():
        tp = annotations[key]
        if raw == "" and not _admits_empty(tp, module):
            name = full(key)
            raise _validation_error(
                f"You passed an empty string for '{name}'. We assume empty values are an attempt "
                f"to unset a parameter; however '{name}' cannot be unset. You should remove "
                f"'{name}' from your request or supply a non-empty value.",
                param=name, code="parameter_invalid_empty")
        out[key] = _coerce(tp, raw, full(key), module)
    return out


def _coerce(tp: Any, value: Any, param: str, module: str) -> Any:
    tp = _resolve(tp, module)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _WRAPPERS:
        return _coerce(args[0], value, param, module)
    if origin in _UNIONS:
        return _coerce_union(list(args), value, param, module)
    if origin in _LITERALS:
        # Wire values are strings; a Literal[True] is sent as "true".
        allowed = [str(a).lower() if isinstance(a, bool) else a for a in args]
        if value in allowed:
            return args[allowed.index(value)]
        raise _validation_error(f"Invalid {param}: must be one of {_one_of(allowed)}",
                                param=param)
    if _is_typeddict(tp):
        return _coerce_typeddict(tp, value, prefix=param)
    if tp is Any or tp is object:
        return value
    if isinstance(value, dict) and not (_is_map(origin) or _is_list(origin)):
        raise _validation_error(f"Invalid {param}: expected {_type_name(tp)}, got a hash",
                                param=param)
    if tp is bool:
        if value in ("true", "false"):
            return value == "true"
        raise _validation_error(f"Invalid boolean: {value}", param=param)
    if tp is int:
        if isinstance(value, str) and _INT_RE.match(value):
            return int(value)
        raise _validation_error(f"Invalid integer: {value}", param=param,
                                code="parameter_invalid_integer")
    if tp is float:
        try:
            return float(value)
        except ValueError:
            raise _validation_error(f"Invalid float: {value}", param=param) from None
    if tp is Decimal:
        if isinstance(value, str) and _DECIMAL_RE.match(value):
            return Decimal(value)
        raise _validation_error(f"Invalid decimal: {value}", param=param)
    if tp is str:
        return value
    if _is_list(origin):
        if isinstance(value, dict) and all(k.isdigit() for k in value):
            value = [value[k] for k in sorted(value, key=int)]
        if not isinstance(value, list):
            raise _validation_error(f"Invalid array: {param}", param=param)
        item_tp = args[0] if args else Any
        return [_coerce(item_tp, v, f"{param}[{i}]", module) for i, v in enumerate(value)]
    if _is_map(origin):
        if not isinstance(value, dict):
            raise _validation_error(f"Invalid hash: {param}", param=param)
        value_tp = args[-1] if args else Any
        return {k: _coerce(value_tp, v, f"{param}[{k}]", module) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce_union(alts: list[Any], value: Any, param: str, module: str) -> Any:
    resolved = [_resolve(a, module) for a in alts]
    literals = [a for a in resolved if typing.get_origin(a) in _LITERALS]
    for literal in literals:
        with contextlib.suppress(ApiError):
            return _coerce(literal, value, param, module)
    enum = [v for a in literals for v in typing.get_args(a) if isinstance(v, str) and v]
    others = [a for a in resolved if a not in literals]
    # The SDK widens enums to `Literal[...]|str` only for forward compatibility; the server at
    # this API version knows exactly the listed values, so the bare `str` is no escape hatch.
    if enum:
        others = [a for a in others if a is not str]
    others.sort(key=lambda a: _shape_rank(a, value, module))
    first: ApiError | None = None
    for alt in others:
        try:
            return _coerce(alt, value, param, module)
        except ApiError as err:
            first = first or err
    if enum and not isinstance(value, dict):
        raise _validation_error(f"Invalid {param}: must be one of {_one_of(enum)}", param=param)
    raise first or _validation_error(f"Invalid {param}", param=param)


def _one_of(values: Sequence[Any]) -> str:
    shown = [str(v) for v in values]
    if len(shown) <= 2:
        return " or ".join(shown)
    return f"{', '.join(shown[:-1])}, or {shown[-1]}"


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault rule. `after=True` lets the request take effect first, then loses the response."""

    kind: FaultKind
    remaining: int | None = 1  # None = unlimited (typical with probability < 1)
    probability: float = 1.0
    path: str | None = None  # fnmatch glob on the URL path, e.g. "/v1/invoices*"
    method: str | None = None
    after: bool = False
    hang_seconds: float = 2.0
    retry_after: int = 1
    id: str = ""
    triggered: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or fnmatch.fnmatchcase(path, self.path)


@dataclass
class RequestRecord:
    """One API request as the double saw it (control endpoints are not logged)."""

    request_id: str
    method: str
    path: str
    route: str | None
    params: JSON
    api_key: str | None
    idempotency_key: str | None
    status: int | None = None  # None: no response was written (dropped, or still running)
    replayed: bool = False
    fault: str | None = None
    at: float = 0.0


@dataclass
class WebhookDelivery:
    event_id: str
    event_type: str
    attempt: int
    status: int | None
    error: str | None
    at: float


@dataclass
class SignedEvent:
    """A webhook as Stripe would POST it: exact payload bytes plus the signature header."""

    event: JSON
    payload: bytes
    signature: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Stripe-Signature": self.signature,
                "Content-Type": "application/json; charset=utf-8"}


def sign_payload(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value: `t=<unix>,v1=<hex hmac-sha256(secret, "t.payload")>`."""
    ts = int(time.time()) if timestamp is None else timestamp
    body = payload.decode() if isinstance(payload, bytes) else payload
    mac = hmac.new(secret.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


# --------------------------------------------------------------------------------------------
# Webhook delivery
# --------------------------------------------------------------------------------------------


class _WebhookDispatcher:
    """Delivers events in the background, one at a time, retrying non-2xx answers with backoff.

    stop() is prompt: queued events stay queued (a restarted double delivers them), like
    Stripe holding deliveries during an outage of the receiving endpoint.
    """

    def __init__(self, double: StripeDouble) -> None:
        self._double = double
        self._cv = threading.Condition()
        self._pending: deque[tuple[int, JSON]] = deque()
        self._outstanding = 0  # queued + in flight, for wait_idle()
        self._held: list[JSON] = []
        self._paused = False
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0  # bumped by reset() so queued events from before are dropped
        self._deliveries: list[WebhookDelivery] = []
        self._http_client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        # One shared (thread-safe) client: building one per event costs tens of milliseconds
        # (TLS context setup) and would dominate webhook-heavy tests.
        with self._cv:
            if self._http_client is None:
                self._http_client = httpx.Client()
            return self._http_client

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, name="stripe-double-webhooks",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._halt.set()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def submit(self, event: JSON) -> None:
        with self._cv:
            if self._paused:
                self._held.append(event)
                return
            self._pending.append((self._generation, event))
            self._outstanding += 1
            self._cv.notify_all()

    def pause(self) -> None:
        with self._cv:
            self._paused = True

    def release(self, order: ReleaseOrder, rng: random.Random) -> list[JSON]:
        with self._cv:
            self._paused = False
            held, self._held = self._held, []
        if order == "reverse":
            held.reverse()
        elif order == "shuffle":
            rng.shuffle(held)
        for event in held:
            self.submit(event)
        return held

    def reset(self) -> None:
        with self._cv:
            self._generation += 1
            self._outstanding -= len(self._pending)
            self._pending.clear()
            self._held = []
            self._paused = False
            self._deliveries = []
            self._cv.notify_all()

    def deliveries(self) -> list[WebhookDelivery]:
        with self._cv:
            return list(self._deliveries)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._outstanding > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._halt.is_set():
                    self._cv.wait()
                if self._halt.is_set():
                    return
                generation, event = self._pending.popleft()
            try:
                if generation == self._generation:
                    self.deliver(event)
            finally:
                with self._cv:
                    self._outstanding -= 1
                    self._cv.notify_all()

    def deliver(self, event: JSON) -> list[WebhookDelivery]:
        """POST one event, re-signing every attempt (as Stripe does), until a 2xx or give-up."""
        double = self._double
        url = double.webhook_url
        attempts: list[WebhookDelivery] = []
        if url is None:
            return attempts
        payload = orjson.dumps(event, option=orjson.OPT_INDENT_2)
        http = self._http()
        for attempt in range(1, double.webhook_max_attempts + 1):
            signature = sign_payload(payload, double.webhook_secret, int(double.clock()))
            status: int | None = None
            error: str | None = None
            try:
                resp = http.post(url, content=payload, timeout=double.webhook_timeout, headers={
                    "Stripe-Signature": signature,
                    "Content-Type": "application/json; charset=utf-8",
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                })
                status = resp.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            record = WebhookDelivery(event["id"], event["type"], attempt, status, error,
                                     double.clock())
            attempts.append(record)
            with self._cv:
                self._deliveries.append(record)
            if status is not None and 200 <= status < 300:
                break
            if attempt < double.webhook_max_attempts and self._halt.wait(
                    double.webhook_retry_delay * 2 ** (attempt - 1)):
                break  # stopping: give up on the remaining retries
        return attempts


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Ctx:
    request_id: str | None
    idempotency_key: str | None
    now: int


@dataclass
class _Stored:
    endpoint: str
    fingerprint: bytes
    response: _Response
    request_id: str
    at: float


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    params_type: str
    handler: str


def _route(method: str, template: str, params_type: str, handler: str) -> _Route:
    regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"
    return _Route(method, template, re.compile(regex), params_type, handler)


# Order matters: the literal `/search` routes must win over `/{id}`.
_ROUTES: tuple[_Route, ...] = (
    _route("POST", "/v1/customers", "CustomerCreateParams", "_customer_create"),
    _route("GET", "/v1/customers", "CustomerListParams", "_customer_list"),
    _route("GET", "/v1/customers/search", "CustomerSearchParams", "_customer_search"),
    _route("GET", "/v1/customers/{id}", "CustomerRetrieveParams", "_customer_retrieve"),
    _route("POST", "/v1/customers/{id}", "CustomerUpdateParams", "_customer_update"),
    _route("DELETE", "/v1/customers/{id}", "CustomerDeleteParams", "_customer_delete"),
    _route("POST", "/v1/invoiceitems", "InvoiceItemCreateParams", "_item_create"),
    _route("GET", "/v1/invoiceitems", "InvoiceItemListParams", "_item_list"),
    _route("GET", "/v1/invoiceitems/{id}", "InvoiceItemRetrieveParams", "_item_retrieve"),
    _route("POST", "/v1/invoiceitems/{id}", "InvoiceItemUpdateParams", "_item_update"),
    _route("DELETE", "/v1/invoiceitems/{id}", "InvoiceItemDeleteParams", "_item_delete"),
    _route("POST", "/v1/invoices", "InvoiceCreateParams", "_invoice_create"),
    _route("GET", "/v1/invoices", "InvoiceListParams", "_invoice_list"),
    _route("GET", "/v1/invoices/search", "InvoiceSearchParams", "_invoice_search"),
    _route("GET", "/v1/invoices/{id}", "InvoiceRetrieveParams", "_invoice_retrieve"),
    _route("POST", "/v1/invoices/{id}", "InvoiceUpdateParams", "_invoice_update"),
    _route("DELETE", "/v1/invoices/{id}", "InvoiceDeleteParams", "_invoice_delete"),
    _route("GET", "/v1/invoices/{id}/lines", "InvoiceListLinesParams", "_invoice_lines"),
    _route("POST", "/v1/invoices/{id}/finalize", "InvoiceFinalizeInvoiceParams",
           "_invoice_finalize"),
    _route("POST", "/v1/invoices/{id}/pay", "InvoicePayParams", "_invoice_pay"),
    _route("POST", "/v1/invoices/{id}/void", "InvoiceVoidInvoiceParams", "_invoice_void"),
    _route("POST", "/v1/invoices/{id}/mark_uncollectible", "InvoiceMarkUncollectibleParams",
           "_invoice_mark_uncollectible"),
    _route("POST", "/v1/invoices/{id}/send", "InvoiceSendInvoiceParams", "_invoice_send"),
    _route("GET", "/v1/events", "EventListParams", "_event_list"),
    _route("GET", "/v1/events/{id}", "EventRetrieveParams", "_event_retrieve"),
)

# Expandable reference fields (`expand[]=customer`, `expand[]=data.invoice`).
_EXPANDABLE = frozenset({"customer", "invoice"})
_SEARCH_FIELDS = {
    "customers": frozenset({"created", "email", "metadata", "name", "phone"}),
    "invoices": frozenset({"created", "currency", "customer", "metadata", "number", "status",
                           "total"}),
}
_SEARCH_CLAUSE = re.compile(
    r"""\s*(?P<neg>-)?(?P<field>metadata\[(?P<q>['"])(?P<mkey>.*?)(?P=q)\]|[a-z_]+)"""
    r"""\s*(?P<op>:|~|>=|<=|>|<)\s*(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]+)""")
_SEARCH_JOIN = re.compile(r"\s+(?:(AND|OR)\s+)?")


class _Server(ThreadingHTTPServer):
    # Daemon threads: a handler hanging on purpose must never block stop() or interpreter exit.
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], double: StripeDouble) -> None:
        self.double = double
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive: the SDK's requests session reuses connections like it would with Stripe.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle + delayed ACKs that costs ~40 ms
    # per keep-alive request, which would dominate tests and benchmarks.
    disable_nagle_algorithm = True
    server_version = "stripe-double/1.0"
    timeout = 120

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the double keeps its own request log

    def setup(self) -> None:
        super().setup()
        self._double().register_connection(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self._double().register_connection(self.connection, add=False)

    def _double(self) -> StripeDouble:
        return cast(_Server, self.server).double

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            response = self._double().handle_http(method, self.path, dict(self.headers.items()),
                                                   body)
        except Exception as exc:  # a bug in the double must surface as a 500, not a hang
            err = ApiError(500, f"stripe double internal error: {exc!r}", type_="api_error")
            response = _json_response(err.status, err.body())
        if response is None:  # injected "disconnect": drop the connection without answering
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
        except OSError:
            # The client gave up (e.g. after an injected hang); that is the point of the fault.
            self.close_connection = True


def _json_response(status: int, body: JSON, headers: Mapping[str, str] | None = None) -> _Response:
    out = {"Content-Type": "application/json", "Access-Control-Allow-Origin": "*"}
    out.update(headers or {})
    return _Response(status, orjson.dumps(body, option=orjson.OPT_INDENT_2), out)


def _decimal_str(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _clone(value: _T) -> _T:
    # State holds only JSON-safe values, so an orjson round trip is an exact deep copy, and
    # several times faster than copy.deepcopy on Stripe-sized objects.
    return cast(_T, orjson.loads(orjson.dumps(value)))


def _fingerprint(params: JSON) -> bytes:
    return orjson.dumps(params, option=orjson.OPT_SORT_KEYS)


# --------------------------------------------------------------------------------------------
# The double
# --------------------------------------------------------------------------------------------


class StripeDouble:
    """In-process Stripe v1 API double served over real HTTP on 127.0.0.1.

    All state lives behind one lock, so it is safe to drive from the HTTP threads and the test
    thread at once. Inspection helpers return deep copies in Stripe's JSON shape.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        api_key: str = DEFAULT_API_KEY,
        strict_api_key: bool = False,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_events: Sequence[str] = ("*",),
        webhook_max_attempts: int = 4,
        webhook_retry_delay: float = 0.05,
        webhook_timeout: float = 5.0,
        seed: int | None = 0,
        default_currency: str = "usd",
        max_invoice_items: int = MAX_INVOICE_ITEMS,
        search_delay: float = 0.0,
        clock: Callable[[], float] = time.time,
        autostart: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        # By default any sk_test_/rk_test_ key is accepted (objects are shared, idempotency keys
        # are scoped per key); strict mode catches a service configured with the wrong key.
        self.strict_api_key = strict_api_key
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret or "whsec_" + "".join(
            random.Random(seed).choices(_ALNUM, k=32))
        self.webhook_events = tuple(webhook_events)
        self.webhook_max_attempts = webhook_max_attempts
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_timeout = webhook_timeout
        self.default_currency = default_currency
        self.max_invoice_items = max_invoice_items
        # Stripe Search is eventually consistent (up to ~1 min); a delay > 0 makes the double
        # hide writes from search for that long, to catch read-after-write reliance on search.
        self.search_delay = search_delay
        self.clock = clock

        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._fault_rng = random.Random(seed)
        self._id_rng = random.Random(None if seed is None else seed + 1)
        self._fault_seq = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._webhooks = _WebhookDispatcher(self)
        self._suppress_delivery = False
        self._init_state()
        if autostart:
            self.start()

    def _init_state(self) -> None:
        self._customers: dict[str, JSON] = {}
        self._deleted_customers: set[str] = set()
        self._invoices: dict[str, JSON] = {}
        self._invoice_items_of: dict[str, list[str]] = {}
        self._items: dict[str, JSON] = {}
        self._line_ids: dict[str, str] = {}
        self._events: dict[str, JSON] = {}
        self._search_index: dict[str, list[tuple[float, JSON]]] = {}
        self._idempotency: dict[tuple[str, str], _Stored] = {}
        self._faults: list[Fault] = []
        self._requests: deque[RequestRecord] = deque(maxlen=200_000)
        self._path_counts: Counter[str] = Counter()
        self._route_counts: Counter[str] = Counter()
        self._key_counts: Counter[str] = Counter()
        self._payment_outcomes: dict[str | None, PaymentOutcome] = {None: "succeed"}

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> StripeDouble:
        """Serve in a background thread (idempotent). After stop(), rebinds the same port."""
        with self._lock:
            if self._httpd is not None:
                return self
            self._stopping.clear()
            self._httpd = _Server((self.host, self.port), self)
            self.port = self._httpd.server_address[1]
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"stripe-double:{self.port}", daemon=True)
            self._thread.start()
            self._webhooks.start()
        return self

    def stop(self) -> None:
        """Stop serving; state is kept, so start() again simulates a Stripe outage window."""
        with self._lock:
            httpd, self._httpd = self._httpd, None
            conns = list(self._connections)
        if httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in injected hangs
        httpd.shutdown()
        httpd.server_close()
        for conn in conns:  # idle keep-alive connections would otherwise linger
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._webhooks.stop()

    def __enter__(self) -> StripeDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def register_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def reset(self) -> None:
        """Forget all objects, events, idempotency keys, faults, logs and held webhooks.

        Configuration (port, keys, webhook URL/secret, payment defaults) is kept.
        """
        with self._lock:
            self._init_state()
            self._webhooks.reset()

    # ---- fault injection -------------------------------------------------------------------

    def inject_fault(
        self,
        kind: FaultKind = "api_error",
        *,
        count: int | None = None,
        probability: float | None = None,
        path: str | None = None,
        method: str | None = None,
        after: bool = False,
        hang_seconds: float = 2.0,
        retry_after: int = 1,
    ) -> Fault:
        """Add a fault rule; rules are checked in insertion order, the first match fires.

        kind: "api_error" (500), "rate_limit" (429 + Retry-After), "timeout" (hang for
        `hang_seconds`, then answer), "disconnect" (close the socket without answering).
        count: fire on the next N matching requests (default 1 when no probability is given).
        probability: fire on this fraction of matching requests, drawn from the seeded RNG.
        after: let the request take effect (object created, idempotent result stored, events
        emitted) and only then fail it: a lost response. A retry with the same Idempotency-Key
        gets the original result back.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if after and kind == "rate_limit":
            raise ValueError("rate limits reject requests before they run; after=True is "
                             "meaningless for kind='rate_limit'")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        remaining = count if count is not None else (1 if probability is None else None)
        with self._lock:
            self._fault_seq += 1
            fault = Fault(kind=kind, remaining=remaining,
                          probability=1.0 if probability is None else probability,
                          path=path, method=method.upper() if method else None, after=after,
                          hang_seconds=hang_seconds, retry_after=retry_after,
                          id=f"fault_{self._fault_seq}")
            self._faults.append(fault)
            return copy.copy(fault)

    def fail_next(
        self,
        n: int = 1,
        kind: FaultKind = "api_error",
        *,
        path: str | None = None,
        method: str | None = None,
        after: bool = False,
        hang_seconds: float = 2.0,
        retry_after: int = 1,
    ) -> Fault:
        """Fail the next `n` matching requests."""
        return self.inject_fault(kind, count=n, path=path, method=method, after=after,
                                 hang_seconds=hang_seconds, retry_after=retry_after)

    def fail_randomly(
        self,
        probability: float,
        kind: FaultKind = "api_error",
        *,
        count: int | None = None,
        path: str | None = None,
        method: str | None = None,
        after: bool = False,
        hang_seconds: float = 2.0,
        retry_after: int = 1,
    ) -> Fault:
        """Fail a seeded-random fraction of matching requests (optionally at most `count`)."""
        return self.inject_fault(kind, count=count, probability=probability, path=path,
                                 method=method, after=after, hang_seconds=hang_seconds,
                                 retry_after=retry_after)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[Fault]:
        with self._lock:
            return [copy.copy(f) for f in self._faults]

    def seed(self, seed: int) -> None:
        """Re-seed the fault RNG so a probabilistic fault pattern can be replayed exactly."""
        with self._lock:
            self._fault_rng.seed(seed)

    def _draw_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in list(self._faults):
                if not fault.matches(method, path):
                    continue
                # Only probabilistic rules consume randomness, keeping seeded runs reproducible
                # regardless of how many deterministic rules are installed.
                if fault.probability < 1.0 and self._fault_rng.random() >= fault.probability:
                    continue
                fault.triggered += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return copy.copy(fault)
        return None

    def _fault_response(self, fault: Fault, request_id: str) -> _Response:
        if fault.kind == "rate_limit":
            err = ApiError(429, "Request rate limit exceeded. Learn more about rate limits here "
                           "https://stripe.com/docs/rate-limits.", code="rate_limit",
                           headers={"Retry-After": str(fault.retry_after)})
        else:
            err = ApiError(500, "An unknown error occurred (injected by the Stripe double).",
                           type_="api_error")
        return _json_response(err.status, err.body(), {**err.headers, "Request-Id": request_id})

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    # ---- payments & webhooks: test-side helpers ---------------------------------------------

    def set_payment_outcome(self, outcome: PaymentOutcome, *, customer: str | None = None) -> None:
        """What `POST /v1/invoices/{id}/pay` does (no payment methods are modelled).

        "succeed" (default) marks the invoice paid; "decline" answers 402 card_declined and
        emits invoice.payment_failed. `customer=None` sets the default for all customers.
        """
        with self._lock:
            self._payment_outcomes[customer] = outcome

    def configure_webhooks(
        self,
        url: str | None,
        *,
        secret: str | None = None,
        events: Sequence[str] | None = None,
        max_attempts: int | None = None,
        retry_delay: float | None = None,
    ) -> None:
        """Point webhook delivery at `url` (None disables delivery; events are still recorded)."""
        with self._lock:
            self.webhook_url = url
            if secret is not None:
                self.webhook_secret = secret
            if events is not None:
                self.webhook_events = tuple(events)
            if max_attempts is not None:
                self.webhook_max_attempts = max_attempts
            if retry_delay is not None:
                self.webhook_retry_delay = retry_delay

    def pay_invoice(self, invoice_id: str, *, deliver: bool = True) -> JSON:
        """Simulate a successful charge (finalizing a draft first); returns the invoice.paid event."""
        return self._helper(invoice_id, deliver, self._helper_pay)

    def fail_payment(self, invoice_id: str, *, deliver: bool = True) -> JSON:
        """Simulate a declined charge attempt; returns the invoice.payment_failed event."""
        return self._helper(invoice_id, deliver, self._record_failed_attempt)

    def finalize_invoice(self, invoice_id: str, *, deliver: bool = True) -> JSON:
        """Finalize a draft as if auto-advance fired; returns the invoice.finalized event."""
        return self._helper(invoice_id, deliver, self._finalize)

    def void_invoice(self, invoice_id: str, *, deliver: bool = True) -> JSON:
        return self._helper(invoice_id, deliver, self._void)

    def mark_uncollectible(self, invoice_id: str, *, deliver: bool = True) -> JSON:
        return self._helper(invoice_id, deliver, self._mark_uncollectible)

    def trigger_event(self, event_type: str, invoice_id: str, *, deliver: bool = True) -> JSON:
        """Emit (and deliver) an event carrying the invoice's current state, changing nothing."""
        with self._lock:
            inv = self._invoice_or_raise(invoice_id)
            return self._emit(event_type, self._render_invoice(inv), None, deliver=deliver)

    def build_signed_event(
        self,
        event_type: str,
        *,
        invoice_id: str | None = None,
        obj: JSON | None = None,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> SignedEvent:
        """A signed event payload + header for tests that POST it themselves (nothing is sent
        or recorded). The data object is the invoice's current state, or `obj`."""
        with self._lock:
            if obj is None:
                if invoice_id is None:
                    raise ValueError("pass invoice_id or obj")
                obj = self._render_invoice(self._invoice_or_raise(invoice_id))
            event = self._new_event(event_type, _clone(obj), None)
        return self.sign_event(event, timestamp=timestamp, secret=secret)

    def sign_event(self, event: JSON, *, timestamp: int | None = None,
                   secret: str | None = None) -> SignedEvent:
        payload = orjson.dumps(event, option=orjson.OPT_INDENT_2)
        ts = int(self.clock()) if timestamp is None else timestamp
        return SignedEvent(event, payload, sign_payload(payload, secret or self.webhook_secret, ts))

    def deliver_event(self, event: JSON | str) -> list[WebhookDelivery]:
        """Deliver one event synchronously now (with retries); accepts an event or its id."""
        if isinstance(event, str):
            with self._lock:
                event = _clone(self._events[event])
        return self._webhooks.deliver(event)

    def deliver_events(self, events: Sequence[JSON | str],
                       order: ReleaseOrder = "fifo") -> list[WebhookDelivery]:
        """Deliver several events synchronously in the given order (e.g. "reverse")."""
        items = list(events)
        if order == "reverse":
            items.reverse()
        elif order == "shuffle":
            with self._lock:
                self._fault_rng.shuffle(items)
        return [d for e in items for d in self.deliver_event(e)]

    def redeliver(self, event_id: str) -> None:
        """Queue an already-delivered event again (Stripe delivers at least once)."""
        with self._lock:
            self._webhooks.submit(_clone(self._events[event_id]))

    def pause_webhooks(self) -> None:
        """Hold back background deliveries until release_webhooks()."""
        self._webhooks.pause()

    def release_webhooks(self, order: ReleaseOrder = "fifo") -> list[str]:
        """Queue held events in `order` ("reverse"/"shuffle" to test out-of-order handling)."""
        with self._lock:
            released = self._webhooks.release(order, self._fault_rng)
        return [e["id"] for e in released]

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Block until every queued delivery (including retries) finished; False on timeout."""
        return self._webhooks.wait_idle(timeout)

    def webhook_deliveries(self) -> list[WebhookDelivery]:
        with self._lock:
            return self._webhooks.deliveries()

    # ---- inspection ------------------------------------------------------------------------

    def customers(self, *, email: str | None = None) -> list[JSON]:
        with self._lock:
            return [_clone(c) for c in self._customers.values()
                    if c["id"] not in self._deleted_customers
                    and (email is None or c["email"] == email)]

    def customer(self, customer_id: str) -> JSON:
        with self._lock:
            return _clone(self._customers[customer_id])

    def invoices(self, *, customer: str | None = None, status: str | None = None) -> list[JSON]:
        with self._lock:
            return [self._render_invoice(i) for i in self._invoices.values()
                    if (customer is None or i["customer"] == customer)
                    and (status is None or i["status"] == status)]

    def invoice(self, invoice_id: str) -> JSON:
        with self._lock:
            return self._render_invoice(self._invoice_or_raise(invoice_id))

    def invoice_items(self, *, invoice: str | None = None,
                      customer: str | None = None) -> list[JSON]:
        with self._lock:
            return [_clone(ii) for ii in self._items.values()
                    if (invoice is None or ii["invoice"] == invoice)
                    and (customer is None or ii["customer"] == customer)]

    def events(self, *, type: str | None = None) -> list[JSON]:
        with self._lock:
            return [_clone(e) for e in self._events.values()
                    if type is None or fnmatch.fnmatchcase(e["type"], type)]

    def requests(self, *, path: str | None = None, method: str | None = None,
                 idempotency_key: str | None = None) -> list[RequestRecord]:
        """Logged API requests, oldest first; `path` is an fnmatch glob."""
        with self._lock:
            return [copy.copy(r) for r in self._requests
                    if (path is None or fnmatch.fnmatchcase(r.path, path))
                    and (method is None or r.method == method.upper())
                    and (idempotency_key is None or r.idempotency_key == idempotency_key)]

    def request_counts(self, *, by: Literal["path", "route"] = "path") -> Counter[str]:
        """Counts keyed "METHOD /v1/invoices/in_1/finalize" (by path) or ".../{id}/..." (route)."""
        with self._lock:
            return Counter(self._path_counts if by == "path" else self._route_counts)

    def idempotency_key_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._key_counts)

    # ---- request processing ----------------------------------------------------------------

    def handle_http(self, method: str, target: str, headers: Mapping[str, str],
                    body: bytes) -> _Response | None:
        """Process one HTTP request; None means "drop the connection without answering"."""
        split = urlsplit(target)
        path = split.path
        headers = {k.lower(): v for k, v in headers.items()}  # HTTP names are case-insensitive
        if path == "/_double" or path.startswith("/_double/"):
            return self._control(method, path, body)
        request_id = "req_" + self._random_id(14)
        idem_key = headers.get("idempotency-key") if method == "POST" else None
        record = RequestRecord(request_id=request_id, method=method, path=path, route=None,
                               params={}, api_key=None, idempotency_key=idem_key,
                               at=self.clock())
        with self._lock:
            self._requests.append(record)
            self._path_counts[f"{method} {path}"] += 1
            if idem_key:
                self._key_counts[idem_key] += 1

        fault = self._draw_fault(method, path)
        if fault is not None:
            record.fault = f"{fault.kind}{':after' if fault.after else ''}"
        if fault is not None and not fault.after:
            if fault.kind == "disconnect":
                return None
            if fault.kind != "timeout":
                response = self._fault_response(fault, request_id)
                record.status = response.status
                return response
            # A hang before Stripe starts working: the request still goes through afterwards,
            # as a request stuck in a load balancer would, even if the client gave up.
            self._sleep(fault.hang_seconds)

        response = self._execute(method, path, split.query, headers, body, record)

        if fault is not None and fault.after:
            if fault.kind == "disconnect":
                return None
            if fault.kind == "api_error":
                response = self._fault_response(fault, request_id)
            else:  # timeout: the work is done and stored; the answer just comes too late
                self._sleep(fault.hang_seconds)
        record.status = response.status
        return response

    def _execute(self, method: str, path: str, query: str, headers: Mapping[str, str],
                 body: bytes, record: RequestRecord) -> _Response:
        request_id = record.request_id
        base_headers = {"Request-Id": request_id,
                        "Stripe-Version": headers.get("stripe-version") or API_VERSION}
        idem_key = record.idempotency_key
        if idem_key:
            base_headers["Idempotency-Key"] = idem_key
        with self._lock:
            try:
                api_key = self._authenticate(headers)
                record.api_key = api_key
                route, path_id = self._match(method, path)
                record.route = route.template
                self._route_counts[f"{method} {route.template}"] += 1
                raw_text = body.decode("utf-8", errors="replace") if method == "POST" else query
                raw = decode_form(parse_qsl(raw_text, keep_blank_values=True))
                record.params = raw
            except ApiError as err:
                return _json_response(err.status, err.body(), {**base_headers, **err.headers})

            scope = (api_key, idem_key) if idem_key else None
            endpoint = f"{method} {route.template.replace('{id}', path_id or '')}"
            if scope is not None:
                replay = self._idempotent_replay(scope, endpoint, raw, base_headers)
                if replay is not None:
                    record.replayed = True
                    return replay

            ctx = _Ctx(request_id=request_id, idempotency_key=idem_key, now=int(self.clock()))
            store = True
            try:
                params_type = getattr(stripe.params, route.params_type)
                params = coerce_params(params_type, raw)
                self._reject_unmodelled(params)
                expand = [str(e) for e in params.get("expand", [])]
                self._check_expand(expand)
                handler = getattr(self, route.handler)
                status, payload = handler(ctx, params, path_id)
                payload = self._apply_expand(payload, expand)
                response = _json_response(status, payload, base_headers)
            except ApiError as err:
                store = err.store
                response = _json_response(err.status, err.body(), {**base_headers, **err.headers})
            if scope is not None and store:
                self._idempotency[scope] = _Stored(endpoint, _fingerprint(raw), response,
                                                   request_id, self.clock())
            if scope is not None:
                response.headers["Original-Request"] = request_id
            return response

    def _authenticate(self, headers: Mapping[str, str]) -> str:
        auth = headers.get("authorization")
        if not auth:
            raise ApiError(401, "You did not provide an API key. You need to provide your API "
                           "key in the Authorization header, using Bearer auth (e.g. "
                           "'Authorization: Bearer YOUR_SECRET_KEY').", store=False)
        scheme, _, credential = auth.partition(" ")
        key = credential.strip()
        if scheme.lower() == "basic":
            with contextlib.suppress(ValueError):
                key = base64.b64decode(key).decode().partition(":")[0]
        elif scheme.lower() != "bearer":
            key = ""
        test_key = key.startswith(("sk_test_", "rk_test_"))
        if not test_key or (self.strict_api_key and key != self.api_key):
            shown = f"{key[:8]}{'*' * 12}{key[-4:]}" if len(key) > 12 else key
            raise ApiError(401, f"Invalid API Key provided: {shown}", store=False)
        return key

    @staticmethod
    def _match(method: str, path: str) -> tuple[_Route, str | None]:
        for route in _ROUTES:
            if route.method != method:
                continue
            m = route.pattern.match(path)
            if m is not None:
                return route, m.groupdict().get("id")
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}). Please see "
                       "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                       store=False)

    def _idempotent_replay(self, scope: tuple[str, str], endpoint: str, raw: JSON,
                           base_headers: Mapping[str, str]) -> _Response | None:
        key = scope[1]
        if len(key) > 255:
            err = _validation_error("Invalid Idempotency-Key: must be at most 255 characters",
                                    param=None)
            return _json_response(err.status, err.body(), base_headers)
        stored = self._idempotency.get(scope)
        if stored is not None and self.clock() - stored.at > IDEMPOTENCY_TTL_SECONDS:
            del self._idempotency[scope]  # Stripe prunes keys after 24 hours
            stored = None
        if stored is None:
            return None
        if stored.endpoint != endpoint:
            err = ApiError(400, "Keys for idempotent requests can only be used for the same "
                           f"endpoint they were first used for ('{stored.endpoint}' vs "
                           f"'{endpoint}'). Try using a key other than '{key}' if you meant "
                           "to execute a different request.", type_="idempotency_error",
                           store=False)
            return _json_response(err.status, err.body(), base_headers)
        if stored.fingerprint != _fingerprint(raw):
            err = ApiError(400, "Keys for idempotent requests can only be used with the same "
                           "parameters they were first used with. Try using a key other than "
                           f"'{key}' if you meant to execute a different request.",
                           type_="idempotency_error", store=False)
            return _json_response(err.status, err.body(), base_headers)
        headers = {**stored.response.headers, **base_headers,
                   "Idempotent-Replayed": "true", "Original-Request": stored.request_id}
        return _Response(stored.response.status, stored.response.body, headers)

    @staticmethod
    def _reject_unmodelled(params: JSON) -> None:
        for key in sorted(params):
            value = params[key]
            empty = value in ("", [], {}, 0, False) or (
                key == "automatic_tax" and not value.get("enabled"))
            if key in _UNMODELLED_PARAMS and not empty:
                raise ApiError(400, f"'{key}' is a valid Stripe parameter, but the Stripe test "
                               "double does not model it.", param=key,
                               code="stripe_double_unsupported", store=False)

    @staticmethod
    def _check_expand(paths: list[str]) -> None:
        for i, path in enumerate(paths):
            parts = path.split(".")
            if parts[-1] not in _EXPANDABLE or any(p != "data" for p in parts[:-1]):
                raise _validation_error(f"This property cannot be expanded ({path}).",
                                        param=f"expand[{i}]")

    def _apply_expand(self, payload: JSON, paths: list[str]) -> JSON:
        for path in paths:
            self._expand_at(payload, path.split("."))
        return payload

    def _expand_at(self, node: Any, parts: list[str]) -> None:
        if not isinstance(node, dict):
            return
        head, rest = parts[0], parts[1:]
        if head == "data" and node.get("object") in ("list", "search_result"):
            for item in node.get("data", []):
                self._expand_at(item, rest)
            return
        if rest:
            self._expand_at(node.get(head), rest)
            return
        ref = node.get(head)
        if isinstance(ref, str):
            if ref in self._customers:
                node[head] = self._render_customer(ref)
            elif ref in self._invoices:
                node[head] = self._render_invoice(self._invoices[ref])

    # ---- ids, events, rendering --------------------------------------------------------------

    def _random_id(self, length: int) -> str:
        with self._lock:
            return "".join(self._id_rng.choices(_ALNUM, k=length))

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._random_id(24)}"

    def _new_event(self, event_type: str, obj: JSON, ctx: _Ctx | None) -> JSON:
        return {
            "id": self._new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(self.clock()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1 if self._wants(event_type) else 0,
            "request": {"id": ctx.request_id if ctx else None,
                        "idempotency_key": ctx.idempotency_key if ctx else None},
            "type": event_type,
        }

    def _wants(self, event_type: str) -> bool:
        return self.webhook_url is not None and any(
            fnmatch.fnmatchcase(event_type, pattern) for pattern in self.webhook_events)

    def _emit(self, event_type: str, obj: JSON, ctx: _Ctx | None, *,
              deliver: bool = True) -> JSON:
        event = self._new_event(event_type, obj, ctx)
        self._events[event["id"]] = event
        if deliver and not self._suppress_delivery and self._wants(event_type):
            self._webhooks.submit(_clone(event))
        return _clone(event)

    def _render_customer(self, customer_id: str) -> JSON:
        if customer_id in self._deleted_customers:
            return {"id": customer_id, "object": "customer", "deleted": True}
        return _clone(self._customers[customer_id])

    def _line_for(self, item: JSON) -> JSON:
        return {
            "id": self._line_ids[item["id"]],
            "object": "line_item",
            "amount": item["amount"],
            "currency": item["currency"],
            "description": item["description"],
            "discount_amounts": [],
            "discountable": item["discountable"],
            "discounts": [],
            "invoice": item["invoice"],
            "livemode": False,
            "metadata": dict(item["metadata"]),
            "parent": {
                "type": "invoice_item_details",
                "invoice_item_details": {"invoice": item["invoice"], "invoice_item": item["id"],
                                         "proration": False,
                                         "proration_details": {"credited_items": None},
                                         "subscription": None},
                "subscription_item_details": None,
            },
            "period": dict(item["period"]),
            "pretax_credit_amounts": [],
            "pricing": _clone(item["pricing"]),
            "quantity": item["quantity"],
            "quantity_decimal": item["quantity_decimal"],
            "subscription": None,
            "subtotal": item["amount"],
            "taxes": [],
        }

    def _lines_of(self, invoice_id: str) -> list[JSON]:
        return [self._line_for(self._items[i]) for i in self._invoice_items_of[invoice_id]]

    def _subtotal(self, invoice_id: str) -> int:
        return sum(self._items[i]["amount"] for i in self._invoice_items_of[invoice_id])

    def _render_invoice(self, inv: JSON) -> JSON:
        # Keys starting with "_" are the double's bookkeeping, not part of Stripe's object.
        out = _clone({k: v for k, v in inv.items() if not k.startswith("_")})
        subtotal = self._subtotal(inv["id"])
        out.update(subtotal=subtotal, subtotal_excluding_tax=subtotal, total=subtotal,
                   total_excluding_tax=subtotal)
        if inv["status"] == "draft":
            # Draft totals follow the items; finalization freezes amount_due.
            out["amount_due"] = max(subtotal, 0)
            out["amount_remaining"] = max(subtotal, 0)
            cust = self._customers.get(inv["customer"])
            if cust is not None:
                out.update(customer_email=cust["email"], customer_name=cust["name"],
                           customer_phone=cust["phone"])
        lines = self._lines_of(inv["id"])
        out["lines"] = {"object": "list", "data": lines[:10], "has_more": len(lines) > 10,
                        "total_count": len(lines), "url": f"/v1/invoices/{inv['id']}/lines"}
        return out

    def _touch(self, obj_id: str) -> None:
        """Record a write for the eventually-consistent search view."""
        if self.search_delay <= 0:
            return
        if obj_id in self._customers:
            snapshot = self._render_customer(obj_id)
        else:
            snapshot = self._render_invoice(self._invoices[obj_id])
        history = self._search_index.setdefault(obj_id, [])
        history.append((self.clock() + self.search_delay, snapshot))

    # ---- lookups ---------------------------------------------------------------------------

    def _customer_or_raise(self, customer_id: str, *, param: str | None = None) -> JSON:
        if customer_id not in self._customers or customer_id in self._deleted_customers:
            raise _no_such("customer", customer_id, param=param or "id",
                           status=400 if param else 404)
        return self._customers[customer_id]

    def _invoice_or_raise(self, invoice_id: str, *, param: str | None = None) -> JSON:
        if invoice_id not in self._invoices:
            raise _no_such("invoice", invoice_id, param=param or "id",
                           status=400 if param else 404)
        return self._invoices[invoice_id]

    def _item_or_raise(self, item_id: str) -> JSON:
        if item_id not in self._items:
            raise _no_such("invoiceitem", item_id, param="id", status=404)
        return self._items[item_id]

    # ---- lists, search ---------------------------------------------------------------------

    @staticmethod
    def _paginate(objects: list[JSON], params: JSON, url: str, kind: str,
                  render: Callable[[JSON], JSON] = _clone) -> JSON:
        """Stripe cursor pagination over `objects` (already in the API's order); only the
        returned page is rendered, so large lists stay cheap for benchmarks."""
        limit = params.get("limit", 10)
        if not 1 <= limit <= 100:
            raise _validation_error("Invalid limit: must be between 1 and 100", param="limit")
        ids = [o["id"] for o in objects]
        if "starting_after" in params and "ending_before" in params:
            raise _validation_error("You may only specify one of these parameters: "
                                    "ending_before, starting_after.", param="ending_before",
                                    code="parameters_exclusive")
        if "starting_after" in params:
            cursor = params["starting_after"]
            if cursor not in ids:
                raise _no_such(kind, cursor, param="starting_after")
            rest = objects[ids.index(cursor) + 1:]
            page, has_more = rest[:limit], len(rest) > limit
        elif "ending_before" in params:
            cursor = params["ending_before"]
            if cursor not in ids:
                raise _no_such(kind, cursor, param="ending_before")
            before = objects[:ids.index(cursor)]
            page, has_more = before[-limit:], len(before) > limit
        else:
            page, has_more = objects[:limit], len(objects) > limit
        return {"object": "list", "data": [render(o) for o in page], "has_more": has_more,
                "url": url}

    @staticmethod
    def _created_filter(objects: list[JSON], spec: Any, field_name: str = "created") -> list[JSON]:
        if spec is None:
            return objects
        if isinstance(spec, int):
            return [o for o in objects if o[field_name] == spec]
        ops: dict[str, Callable[[int, int], bool]] = {
            "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
            "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        return [o for o in objects if o[field_name] is not None
                and all(ops[k](o[field_name], v) for k, v in spec.items())]

    def _search(self, resource: str, params: JSON, live: list[JSON]) -> JSON:
        url = f"/v1/{resource}/search"
        clauses, joiner = self._parse_query(resource, params["query"])
        now = self.clock()
        if self.search_delay > 0:
            visible: list[JSON] = []
            for obj in live:
                seen = [snap for at, snap in self._search_index.get(obj["id"], []) if at <= now]
                if seen:
                    visible.append(seen[-1])
            live = visible
        combine = all if joiner == "AND" else any
        hits = [o for o in live if combine(self._clause_matches(o, c) for c in clauses)]
        hits.reverse()  # newest first, like lists
        limit = params.get("limit", 10)
        if not 1 <= limit <= 100:
            raise _validation_error("Invalid limit: must be between 1 and 100", param="limit")
        offset = 0
        if "page" in params:
            token = params["page"]
            if not token.startswith("page_") or not token[5:].isdigit():
                raise _validation_error(f"Invalid page: {token}", param="page")
            offset = int(token[5:])
        page = hits[offset:offset + limit]
        has_more = len(hits) > offset + limit
        return {"object": "search_result", "data": page, "has_more": has_more,
                "next_page": f"page_{offset + limit}" if has_more else None, "url": url}

    @staticmethod
    def _parse_query(resource: str, query: str) -> tuple[list[JSON], str]:
        """Parse Stripe's search language: `field:'v'`, `metadata['k']:'v'`, `-`, `~`, `<`/`>`,
        joined by AND, OR or whitespace (= AND); AND and OR can't be mixed; <= 10 clauses."""
        text = query.strip()
        pos = 0
        joiners: set[str] = set()
        clauses: list[JSON] = []
        while True:
            m = _SEARCH_CLAUSE.match(text, pos)
            if m is None:
                raise _validation_error(f"Could not parse the search query near: "
                                        f"{text[pos:]!r}", param="query")
            pos = m.end()
            name = "metadata" if m.group("mkey") is not None else m.group("field")
            if name not in _SEARCH_FIELDS[resource]:
                raise _validation_error(f"Field '{name}' is an unsupported search field for "
                                        f"resource {resource}.", param="query")
            raw_value = m.group("value")
            value: Any
            if raw_value[0] in "'\"":
                value = re.sub(r"\\(.)", r"\1", raw_value[1:-1])
            elif raw_value == "null":
                value = None
            elif _INT_RE.match(raw_value):
                value = int(raw_value)
            else:
                raise _validation_error(f"Invalid search value: {raw_value}", param="query")
            if m.group("op") == "~" and (not isinstance(value, str) or len(value) < 3):
                raise _validation_error("The substring operator (~) requires at least 3 "
                                        "characters.", param="query")
            clauses.append({"field": name, "key": m.group("mkey"), "op": m.group("op"),
                            "value": value, "negate": m.group("neg") is not None})
            joiner = _SEARCH_JOIN.match(text, pos)
            if joiner is None or pos == len(text):
                break
            joiners.add(joiner.group(1) or "AND")
            pos = joiner.end()
        if pos != len(text):
            raise _validation_error(f"Could not parse the search query near: {text[pos:]!r}",
                                    param="query")
        if len(joiners) > 1:
            raise _validation_error("A search query cannot mix AND and OR.", param="query")
        if len(clauses) > 10:
            raise _validation_error("A search query can have at most 10 clauses.",
                                    param="query")
        return clauses, (joiners.pop() if joiners else "AND")

    @staticmethod
    def _clause_matches(obj: JSON, clause: JSON) -> bool:
        if clause["field"] == "metadata":
            actual = (obj.get("metadata") or {}).get(clause["key"])
        else:
            actual = obj.get(clause["field"])
            if isinstance(actual, dict):  # an expanded reference
                actual = actual.get("id")
        value, op = clause["value"], clause["op"]
        result: bool
        if op == ":":
            if isinstance(actual, str) and isinstance(value, str):
                result = actual.lower() == value.lower()  # Stripe's ':' is case-insensitive
            else:
                result = actual == value
        elif op == "~":
            result = isinstance(actual, str) and value.lower() in actual.lower()
        else:
            if not isinstance(actual, int) or not isinstance(value, int):
                return False
            result = {">": actual > value, "<": actual < value, ">=": actual >= value,
                      "<=": actual <= value}[op]
        return result != bool(clause["negate"])

    # ---- metadata --------------------------------------------------------------------------

    @staticmethod
    def _merge_metadata(current: Mapping[str, str], update: Any) -> dict[str, str]:
        if update is None:
            return dict(current)
        if update == "":
            return {}  # `metadata=""` clears every key
        merged = dict(current)
        for key, value in update.items():
            if value == "":
                merged.pop(key, None)  # `metadata[k]=""` unsets one key
            else:
                merged[key] = value
        for key, value in merged.items():
            if len(key) > 40:
                raise _validation_error("Metadata keys can have a maximum length of 40 "
                                        "characters.", param=f"metadata[{key}]")
            if len(value) > 500:
                raise _validation_error("Metadata values can have a maximum length of 500 "
                                        "characters.", param=f"metadata[{key}]")
        if len(merged) > 50:
            raise _validation_error("You can have at most 50 metadata keys.", param="metadata")
        return merged

    # ---- customers -------------------------------------------------------------------------

    def _customer_create(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        prefix = p.get("invoice_prefix") or "".join(
            self._id_rng.choices(string.ascii_uppercase + string.digits, k=8))
        self._check_invoice_prefix(prefix)
        cid = self._new_id("cus")
        cust: JSON = {
            "id": cid, "object": "customer", "address": p.get("address") or None, "balance": 0,
            "created": ctx.now, "currency": None, "default_source": None, "delinquent": False,
            "description": p.get("description"), "discount": None, "email": p.get("email"),
            "invoice_prefix": prefix,
            "invoice_settings": {"custom_fields": None, "default_payment_method": None,
                                 "footer": None, "rendering_options": None},
            "livemode": False, "metadata": self._merge_metadata({}, p.get("metadata")),
            "name": p.get("name"), "next_invoice_sequence": p.get("next_invoice_sequence", 1),
            "phone": p.get("phone"), "preferred_locales": p.get("preferred_locales", []),
            "shipping": p.get("shipping") or None, "tax_exempt": p.get("tax_exempt", "none"),
            "test_clock": None,
        }
        if isinstance(p.get("invoice_settings"), dict):
            cust["invoice_settings"].update(p["invoice_settings"])
        self._customers[cid] = cust
        self._touch(cid)
        self._emit("customer.created", self._render_customer(cid), ctx)
        return 200, self._render_customer(cid)

    @staticmethod
    def _check_invoice_prefix(prefix: str) -> None:
        if not re.fullmatch(r"[A-Z0-9]{3,12}", prefix):
            raise _validation_error("Invalid invoice_prefix: must be 3-12 uppercase letters or "
                                    "numbers.", param="invoice_prefix")

    def _customer_retrieve(self, ctx: _Ctx, p: JSON, cid: str) -> tuple[int, JSON]:
        if cid not in self._customers:
            raise _no_such("customer", cid, param="id", status=404)
        return 200, self._render_customer(cid)

    def _customer_update(self, ctx: _Ctx, p: JSON, cid: str) -> tuple[int, JSON]:
        cust = self._customer_or_raise(cid)
        if "invoice_prefix" in p:
            self._check_invoice_prefix(p["invoice_prefix"])
        for key, value in p.items():
            if key == "metadata":
                cust["metadata"] = self._merge_metadata(cust["metadata"], value)
            elif key == "invoice_settings" and isinstance(value, dict):
                cust["invoice_settings"].update(value)
            elif key in cust and key not in ("id", "object", "created", "livemode"):
                cust[key] = None if value == "" else value
        self._touch(cid)
        self._emit("customer.updated", self._render_customer(cid), ctx)
        return 200, self._render_customer(cid)

    def _customer_delete(self, ctx: _Ctx, p: JSON, cid: str) -> tuple[int, JSON]:
        self._customer_or_raise(cid)
        self._emit("customer.deleted", self._render_customer(cid), ctx)
        self._deleted_customers.add(cid)
        self._search_index.pop(cid, None)
        return 200, {"id": cid, "object": "customer", "deleted": True}

    def _customer_list(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        objs = [c for c in self._customers.values() if c["id"] not in self._deleted_customers]
        if "email" in p:
            objs = [c for c in objs if c["email"] == p["email"]]  # case-sensitive, as documented
        objs = self._created_filter(objs, p.get("created"))
        return 200, self._paginate(objs[::-1], p, "/v1/customers", "customer")

    def _customer_search(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        live = [self._render_customer(c) for c in self._customers
                if c not in self._deleted_customers]
        return 200, self._search("customers", p, live)

    # ---- invoice items ---------------------------------------------------------------------

    def _amounts(self, p: JSON, base: JSON | None = None) -> tuple[int, Decimal, Decimal]:
        """(amount, unit_amount_decimal, quantity) from `amount` or `unit_amount_decimal` * qty."""
        if "amount" in p and "unit_amount_decimal" in p:
            raise _validation_error("You may only specify one of these parameters: amount, "
                                    "unit_amount_decimal.", param="amount",
                                    code="parameters_exclusive")
        if "quantity" in p and "quantity_decimal" in p:
            raise _validation_error("You may only specify one of these parameters: quantity, "
                                    "quantity_decimal.", param="quantity",
                                    code="parameters_exclusive")
        if "quantity" in p:
            quantity = Decimal(p["quantity"])
        elif "quantity_decimal" in p:
            quantity = p["quantity_decimal"]
        else:
            quantity = Decimal(base["quantity_decimal"]) if base else Decimal(1)
        if quantity < 0:
            param = "quantity" if "quantity" in p else "quantity_decimal"
            raise _validation_error(f"Invalid {param}: must be greater than or equal to 0",
                                    param=param)
        for name in ("unit_amount_decimal", "quantity_decimal"):
            value = p.get(name)
            if isinstance(value, Decimal) and -int(value.as_tuple().exponent) > 12:
                raise _validation_error(f"Invalid {name}: at most 12 decimal places allowed",
                                        param=name)
        if "amount" in p:
            amount = int(p["amount"])
            unit = Decimal(amount) / quantity if quantity else Decimal(amount)
        elif "unit_amount_decimal" in p:
            unit = p["unit_amount_decimal"]
            # Stripe bills whole minor units; fractional results round half up.
            amount = int((unit * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        elif base is not None:
            unit = Decimal(base["pricing"]["unit_amount_decimal"])
            amount = int((unit * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        else:
            raise _validation_error("Missing required param: amount. Provide amount, or "
                                    "unit_amount_decimal with quantity.", param="amount",
                                    code="parameter_missing")
        return amount, unit, quantity

    def _attachable_invoice(self, invoice_id: str, customer_id: str) -> JSON:
        inv = self._invoice_or_raise(invoice_id, param="invoice")
        if inv["customer"] != customer_id:
            raise ApiError(400, f"The invoice {invoice_id} belongs to customer "
                           f"{inv['customer']}, not {customer_id}.", param="invoice")
        if inv["status"] != "draft":
            raise _not_editable(f"You can only add invoice items to draft invoices; invoice "
                                f"{invoice_id} is {inv['status']}.", param="invoice")
        if len(self._invoice_items_of[invoice_id]) >= self.max_invoice_items:
            raise ApiError(400, f"An invoice may contain at most {self.max_invoice_items} "
                           f"invoice items; invoice {invoice_id} already has "
                           f"{self.max_invoice_items}.", param="invoice")
        return inv

    def _item_create(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        if "customer" not in p:
            raise _missing("customer")
        cust = self._customer_or_raise(p["customer"], param="customer")
        amount, unit, quantity = self._amounts(p)
        inv = self._attachable_invoice(p["invoice"], cust["id"]) if "invoice" in p else None
        currency = (p.get("currency") or (inv["currency"] if inv else None)
                    or cust["currency"] or self.default_currency).lower()
        if inv is not None and currency != inv["currency"]:
            raise ApiError(400, f"The currency of this invoice item ({currency}) does not match "
                           f"the invoice's currency ({inv['currency']}).", param="currency")
        period = p.get("period") or {"start": ctx.now, "end": ctx.now}
        if period["end"] < period["start"]:
            raise _validation_error("Invalid period: end must be greater than or equal to "
                                    "start.", param="period[end]")
        iid = self._new_id("ii")
        item: JSON = {
            "id": iid, "object": "invoiceitem", "amount": amount, "currency": currency,
            "customer": cust["id"], "customer_account": None, "date": ctx.now,
            "description": p.get("description"), "discountable": p.get("discountable", True),
            "discounts": [], "invoice": inv["id"] if inv else None, "livemode": False,
            "metadata": self._merge_metadata({}, p.get("metadata")), "net_amount": amount,
            "parent": None, "period": {"start": period["start"], "end": period["end"]},
            "pricing": {"price_details": None, "type": "price_details",
                        "unit_amount_decimal": _decimal_str(unit)},
            "proration": False, "proration_details": {"discount_amounts": []},
            "quantity": int(quantity.to_integral_value(rounding=ROUND_HALF_UP)),
            "quantity_decimal": _decimal_str(quantity), "tax_rates": [], "test_clock": None,
        }
        self._items[iid] = item
        self._line_ids[iid] = self._new_id("il")
        if cust["currency"] is None:
            cust["currency"] = currency
        if inv is not None:
            self._invoice_items_of[inv["id"]].append(iid)
            self._touch(inv["id"])
        self._emit("invoiceitem.created", _clone(item), ctx)
        return 200, _clone(item)

    def _item_retrieve(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        return 200, _clone(self._item_or_raise(iid))

    def _editable_item(self, iid: str) -> JSON:
        item = self._item_or_raise(iid)
        if item["invoice"] is not None and self._invoices[item["invoice"]]["status"] != "draft":
            raise _not_editable(f"Invoice item {iid} belongs to finalized invoice "
                                f"{item['invoice']} and can no longer be changed.")
        return item

    def _item_update(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        item = self._editable_item(iid)
        if {"amount", "unit_amount_decimal", "quantity", "quantity_decimal"} & p.keys():
            amount, unit, quantity = self._amounts(p, base=item)
            item.update(amount=amount, net_amount=amount,
                        quantity=int(quantity.to_integral_value(rounding=ROUND_HALF_UP)),
                        quantity_decimal=_decimal_str(quantity))
            item["pricing"]["unit_amount_decimal"] = _decimal_str(unit)
        if "metadata" in p:
            item["metadata"] = self._merge_metadata(item["metadata"], p["metadata"])
        if "description" in p:
            item["description"] = p["description"] or None
        for key in ("discountable", "period"):
            if key in p:
                item[key] = p[key]
        if item["invoice"] is not None:
            self._touch(item["invoice"])
        self._emit("invoiceitem.updated", _clone(item), ctx)
        return 200, _clone(item)

    def _item_delete(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        item = self._editable_item(iid)
        self._remove_item(item)
        self._emit("invoiceitem.deleted", _clone(item), ctx)
        return 200, {"id": iid, "object": "invoiceitem", "deleted": True}

    def _remove_item(self, item: JSON) -> None:
        if item["invoice"] is not None:
            self._invoice_items_of[item["invoice"]].remove(item["id"])
            self._touch(item["invoice"])
        del self._items[item["id"]]
        self._line_ids.pop(item["id"], None)

    def _item_list(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        objs = list(self._items.values())
        if "invoice" in p:
            objs = [i for i in objs if i["invoice"] == p["invoice"]]
        if "customer" in p:
            objs = [i for i in objs if i["customer"] == p["customer"]]
        if "pending" in p:
            objs = [i for i in objs if (i["invoice"] is None) == p["pending"]]
        objs = self._created_filter(objs, p.get("created"), "date")
        return 200, self._paginate(objs[::-1], p, "/v1/invoiceitems", "invoiceitem")

    # ---- invoices --------------------------------------------------------------------------

    def _check_due_settings(self, method: str, days: Any, due_date: Any) -> None:
        if method == "charge_automatically":
            for name, value in (("days_until_due", days), ("due_date", due_date)):
                if value is not None:
                    raise _validation_error(f"Invalid {name}: {name} can only be set when "
                                            "collection_method is send_invoice.", param=name)
        if days is not None and due_date is not None:
            raise _validation_error("You may only specify one of these parameters: "
                                    "days_until_due, due_date.", param="days_until_due",
                                    code="parameters_exclusive")
        if days is not None and days < 0:
            raise _validation_error("Invalid days_until_due: must be greater than or equal to "
                                    "0", param="days_until_due")

    def _invoice_create(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        if "customer" not in p:
            raise _missing("customer")
        cust = self._customer_or_raise(p["customer"], param="customer")
        method = p.get("collection_method", "charge_automatically")
        days, due_date = p.get("days_until_due"), p.get("due_date")
        self._check_due_settings(method, days, due_date)
        if method == "send_invoice" and days is None and due_date is None:
            days = 30  # the account's default payment terms
        currency = (p.get("currency") or cust["currency"] or self.default_currency).lower()
        iid = self._new_id("in")
        inv: JSON = {
            "id": iid, "object": "invoice", "account_country": "US",
            "account_name": "Stripe Double", "account_tax_ids": None, "amount_due": 0,
            "amount_overpaid": 0, "amount_paid": 0, "amount_remaining": 0,
            "amount_shipping": 0, "application": None, "attempt_count": 0, "attempted": False,
            "auto_advance": p.get("auto_advance", False),
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None,
                              "provider": None, "status": None},
            "automatically_finalizes_at": p.get("automatically_finalizes_at"),
            "billing_reason": "manual", "collection_method": method, "created": ctx.now,
            "currency": currency, "custom_fields": p.get("custom_fields") or None,
            "customer": cust["id"], "customer_account": None, "customer_address": None,
            "customer_email": cust["email"], "customer_name": cust["name"],
            "customer_phone": cust["phone"], "customer_shipping": None,
            "customer_tax_exempt": cust["tax_exempt"], "customer_tax_ids": [],
            "default_payment_method": None, "default_source": None, "default_tax_rates": [],
            "description": p.get("description"), "discounts": [],
            "due_date": due_date if due_date is not None else (
                ctx.now + days * 86400 if days is not None else None),
            "_days_until_due": days,  # internal: the object has no such field any more
            "effective_at": p.get("effective_at"), "ending_balance": None,
            "footer": p.get("footer"), "from_invoice": None, "hosted_invoice_url": None,
            "invoice_pdf": None, "issuer": {"type": "self"}, "last_finalization_error": None,
            "latest_revision": None, "livemode": False,
            "metadata": self._merge_metadata({}, p.get("metadata")),
            "next_payment_attempt": None, "number": p.get("number"), "on_behalf_of": None,
            "parent": None,
            "payment_settings": {"default_mandate": None, "payment_method_options": None,
                                 "payment_method_types": None},
            "period_end": ctx.now, "period_start": ctx.now,
            "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
            "receipt_number": None, "rendering": None, "shipping_cost": None,
            "shipping_details": None, "starting_balance": cust["balance"],
            "statement_descriptor": p.get("statement_descriptor"), "status": "draft",
            "status_details": None,
            "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None,
                                   "paid_at": None, "voided_at": None},
            "test_clock": None, "threshold_reason": None, "total_discount_amounts": [],
            "total_pretax_credit_amounts": [], "total_taxes": [], "webhooks_delivered_at": None,
        }
        self._invoices[iid] = inv
        self._invoice_items_of[iid] = []
        if cust["currency"] is None:
            cust["currency"] = currency
        if p.get("pending_invoice_items_behavior", "exclude") == "include":
            pending = [i for i in self._items.values() if i["customer"] == cust["id"]
                       and i["invoice"] is None and i["currency"] == currency]
            for item in pending[: self.max_invoice_items]:
                item["invoice"] = iid
                self._invoice_items_of[iid].append(item["id"])
        self._touch(iid)
        self._emit("invoice.created", self._render_invoice(inv), ctx)
        return 200, self._render_invoice(inv)

    def _invoice_retrieve(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        return 200, self._render_invoice(self._invoice_or_raise(iid))

    # Once finalized, Stripe freezes monetary fields and collection_method; these stay editable.
    _EDITABLE_AFTER_FINALIZE = frozenset({
        "metadata", "description", "footer", "auto_advance", "custom_fields", "expand",
        "rendering", "statement_descriptor"})

    def _invoice_update(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        inv = self._invoice_or_raise(iid)
        if inv["status"] != "draft":
            frozen = sorted(set(p) - self._EDITABLE_AFTER_FINALIZE)
            if frozen:
                raise _not_editable(f"You can't change '{frozen[0]}' of invoice {iid} because "
                                    f"it is {inv['status']}; only draft invoices are fully "
                                    "editable.", param=frozen[0])
            if inv["status"] in ("paid", "void") and "auto_advance" in p:
                raise _not_editable(f"auto_advance can't be changed on a {inv['status']} "
                                    "invoice.", param="auto_advance")
        if {"collection_method", "days_until_due", "due_date"} & p.keys():
            method = str(p.get("collection_method", inv["collection_method"]))
            if "days_until_due" in p or "due_date" in p:
                days, due_date = p.get("days_until_due"), p.get("due_date")
            elif method == "send_invoice":  # keep the existing payment terms
                days = inv["_days_until_due"]
                due_date = inv["due_date"] if days is None else None
            else:
                days, due_date = None, None
            self._check_due_settings(method, days, due_date)
            if method == "send_invoice" and days is None and due_date is None:
                days = 30
            if days is not None:
                due_date = inv["created"] + days * 86400
            inv.update(collection_method=method, _days_until_due=days, due_date=due_date)
        for key, value in p.items():
            if key == "metadata":
                inv["metadata"] = self._merge_metadata(inv["metadata"], value)
            elif key in ("description", "footer", "statement_descriptor", "number",
                         "automatically_finalizes_at", "effective_at"):
                inv[key] = value or None
            elif key == "auto_advance":
                inv[key] = value
            elif key in ("custom_fields", "rendering"):
                inv[key] = value or None
        self._touch(iid)
        self._emit("invoice.updated", self._render_invoice(inv), ctx)
        return 200, self._render_invoice(inv)

    def _invoice_delete(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        inv = self._invoice_or_raise(iid)
        if inv["status"] != "draft":
            raise ApiError(400, f"You can only delete draft invoices; invoice {iid} is "
                           f"{inv['status']}. Void it instead.", param="id")
        self._emit("invoice.deleted", self._render_invoice(inv), ctx)
        for item_id in list(self._invoice_items_of[iid]):
            self._remove_item(self._items[item_id])
        del self._invoices[iid], self._invoice_items_of[iid]
        self._search_index.pop(iid, None)
        return 200, {"id": iid, "object": "invoice", "deleted": True}

    def _invoice_list(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        objs = list(self._invoices.values())
        for key in ("customer", "status", "collection_method"):
            if key in p:
                objs = [i for i in objs if i[key] == p[key]]
        objs = self._created_filter(objs, p.get("created"))
        objs = self._created_filter(objs, p.get("due_date"), "due_date")
        return 200, self._paginate(objs[::-1], p, "/v1/invoices", "invoice",
                                   render=self._render_invoice)

    def _invoice_search(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        live = [self._render_invoice(i) for i in self._invoices.values()]
        return 200, self._search("invoices", p, live)

    def _invoice_lines(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        self._invoice_or_raise(iid)
        return 200, self._paginate(self._lines_of(iid), p, f"/v1/invoices/{iid}/lines",
                                   "line item")

    def _invoice_finalize(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        inv = self._invoice_or_raise(iid)
        self._finalize(inv, ctx, auto_advance=p.get("auto_advance"))
        return 200, self._render_invoice(inv)

    def _invoice_pay(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        inv = self._invoice_or_raise(iid)
        if inv["status"] == "paid":
            raise ApiError(400, "Invoice is already paid", param="id")
        if inv["status"] == "void":
            raise ApiError(400, "This invoice has been voided and can no longer be paid.",
                           param="id")
        if inv["status"] == "draft":
            self._finalize(inv, ctx)  # Stripe finalizes a draft before attempting payment
            if inv["status"] == "paid":  # a zero-amount invoice was paid on finalization
                return 200, self._render_invoice(inv)
        if p.get("paid_out_of_band"):
            self._mark_paid(inv, ctx, out_of_band=True)
            return 200, self._render_invoice(inv)
        outcome = self._payment_outcomes.get(inv["customer"], self._payment_outcomes[None])
        if outcome == "decline":
            self._record_failed_attempt(inv, ctx)
            raise ApiError(402, "Your card was declined.", type_="card_error",
                           code="card_declined",
                           extra={"decline_code": "generic_decline"})
        self._mark_paid(inv, ctx)
        return 200, self._render_invoice(inv)

    def _invoice_void(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        inv = self._invoice_or_raise(iid)
        self._void(inv, ctx)
        return 200, self._render_invoice(inv)

    def _invoice_mark_uncollectible(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        inv = self._invoice_or_raise(iid)
        self._mark_uncollectible(inv, ctx)
        return 200, self._render_invoice(inv)

    def _invoice_send(self, ctx: _Ctx, p: JSON, iid: str) -> tuple[int, JSON]:
        inv = self._invoice_or_raise(iid)
        if inv["collection_method"] != "send_invoice":
            raise ApiError(400, "You can only manually send an invoice if its collection "
                           "method is 'send_invoice'.", param="id")
        if inv["status"] in ("draft", "void"):
            raise _not_editable(f"You can't send a {inv['status']} invoice; finalize it first."
                                if inv["status"] == "draft" else "You can't send a void invoice.")
        # Test mode sends no email, but the event is emitted, exactly like Stripe.
        self._emit("invoice.sent", self._render_invoice(inv), ctx)
        return 200, self._render_invoice(inv)

    # ---- state transitions (shared by the API and the test helpers) ------------------------

    def _finalize(self, inv: JSON, ctx: _Ctx | None, auto_advance: bool | None = None) -> JSON:
        if inv["status"] != "draft":
            raise _not_editable("This invoice is already finalized, you can't re-finalize a "
                                "non-draft invoice.", param="id")
        now = int(self.clock())
        cust = self._customers[inv["customer"]]
        if inv["number"] is None:
            inv["number"] = f"{cust['invoice_prefix']}-{cust['next_invoice_sequence']:04d}"
            cust["next_invoice_sequence"] += 1
        if auto_advance is not None:
            inv["auto_advance"] = auto_advance
        total = self._subtotal(inv["id"])
        token = self._random_id(24)
        inv.update(
            status="open", amount_due=max(total, 0), amount_remaining=max(total, 0),
            ending_balance=0, effective_at=inv["effective_at"] or now,
            customer_email=cust["email"], customer_name=cust["name"],
            customer_phone=cust["phone"],
            hosted_invoice_url=f"https://invoice.stripe.com/i/acct_double/test_{token}",
            invoice_pdf=f"https://pay.stripe.com/invoice/acct_double/test_{token}/pdf",
        )
        inv["status_transitions"]["finalized_at"] = now
        if inv["collection_method"] == "charge_automatically" and inv["auto_advance"]:
            inv["next_payment_attempt"] = now + 3600  # Stripe charges about an hour later
        self._touch(inv["id"])
        event = self._emit("invoice.finalized", self._render_invoice(inv), ctx)
        if inv["amount_due"] == 0:
            # Stripe marks zero-amount invoices paid as soon as they are finalized.
            self._mark_paid(inv, ctx, out_of_band=False)
        return event

    def _mark_paid(self, inv: JSON, ctx: _Ctx | None, *, out_of_band: bool = False) -> JSON:
        now = int(self.clock())
        charged = not out_of_band and inv["amount_due"] > 0
        inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0,
                   next_payment_attempt=None)
        if charged:
            inv["attempt_count"] += 1
            inv["attempted"] = True
        inv["status_transitions"]["paid_at"] = now
        self._touch(inv["id"])
        event = self._emit("invoice.paid", self._render_invoice(inv), ctx)
        if not out_of_band:
            self._emit("invoice.payment_succeeded", self._render_invoice(inv), ctx)
        return event

    def _record_failed_attempt(self, inv: JSON, ctx: _Ctx | None) -> JSON:
        if inv["status"] not in ("open", "uncollectible"):
            raise ApiError(400, f"Only open invoices can have failed payment attempts; invoice "
                           f"{inv['id']} is {inv['status']}.", param="id")
        now = int(self.clock())
        inv["attempt_count"] += 1
        inv["attempted"] = True
        retries = inv["collection_method"] == "charge_automatically" and inv["auto_advance"]
        inv["next_payment_attempt"] = now + 3 * 86400 if retries else None  # Smart Retries-ish
        self._touch(inv["id"])
        return self._emit("invoice.payment_failed", self._render_invoice(inv), ctx)

    def _void(self, inv: JSON, ctx: _Ctx | None) -> JSON:
        if inv["status"] not in ("open", "uncollectible"):
            hint = " Delete draft invoices instead." if inv["status"] == "draft" else ""
            raise ApiError(400, f"You can only void open or uncollectible invoices; invoice "
                           f"{inv['id']} is {inv['status']}.{hint}", param="id")
        inv.update(status="void", next_payment_attempt=None)
        inv["status_transitions"]["voided_at"] = int(self.clock())
        self._touch(inv["id"])
        return self._emit("invoice.voided", self._render_invoice(inv), ctx)

    def _mark_uncollectible(self, inv: JSON, ctx: _Ctx | None) -> JSON:
        if inv["status"] != "open":
            raise ApiError(400, f"You can only mark open invoices as uncollectible; invoice "
                           f"{inv['id']} is {inv['status']}.", param="id")
        inv.update(status="uncollectible", next_payment_attempt=None)
        inv["status_transitions"]["marked_uncollectible_at"] = int(self.clock())
        self._touch(inv["id"])
        return self._emit("invoice.marked_uncollectible", self._render_invoice(inv), ctx)

    def _helper_pay(self, inv: JSON, ctx: _Ctx | None) -> JSON:
        if inv["status"] == "draft":
            self._finalize(inv, ctx)
            if inv["status"] == "paid":
                return self._latest_event(inv["id"], "invoice.paid")
        if inv["status"] not in ("open", "uncollectible"):
            raise ApiError(400, f"Invoice {inv['id']} is {inv['status']} and can't be paid.",
                           param="id")
        return self._mark_paid(inv, ctx)

    def _latest_event(self, invoice_id: str, event_type: str) -> JSON:
        for event in reversed(self._events.values()):
            if event["type"] == event_type and event["data"]["object"]["id"] == invoice_id:
                return _clone(event)
        raise KeyError(event_type)

    def _helper(self, invoice_id: str, deliver: bool,
                action: Callable[[JSON, _Ctx | None], JSON]) -> JSON:
        with self._lock:
            inv = self._invoice_or_raise(invoice_id)
            self._suppress_delivery = not deliver
            try:
                return action(inv, None)
            finally:
                self._suppress_delivery = False

    # ---- event endpoints -------------------------------------------------------------------

    def _event_list(self, ctx: _Ctx, p: JSON, _: str | None) -> tuple[int, JSON]:
        objs = list(self._events.values())
        if "type" in p:
            objs = [e for e in objs if fnmatch.fnmatchcase(e["type"], p["type"])]
        if "types" in p:
            objs = [e for e in objs if e["type"] in p["types"]]
        objs = self._created_filter(objs, p.get("created"))
        return 200, self._paginate(objs[::-1], p, "/v1/events", "event")

    def _event_retrieve(self, ctx: _Ctx, p: JSON, eid: str) -> tuple[int, JSON]:
        if eid not in self._events:
            raise _no_such("event", eid, param="id", status=404)
        return 200, _clone(self._events[eid])

    # ---- control endpoints (/_double/...) for out-of-process drivers -------------------------

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        try:
            data: Any = orjson.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object")
            return _json_response(200, self._control_dispatch(method, path, data))
        except (ValueError, TypeError, KeyError) as exc:
            return _json_response(400, {"error": {"type": "invalid_request_error",
                                                  "message": f"control request failed: {exc}"}})
        except ApiError as err:
            return _json_response(err.status, err.body())

    def _control_dispatch(self, method: str, path: str, data: JSON) -> JSON:
        parts = path.strip("/").split("/")[1:]
        if parts == ["faults"]:
            if method == "GET":
                return {"faults": [asdict(f) for f in self.faults()]}
            if method == "DELETE":
                self.clear_faults()
                return {"cleared": True}
            if "seed" in data:
                self.seed(int(data.pop("seed")))
            allowed = {"kind", "count", "probability", "path", "method", "after",
                       "hang_seconds", "retry_after"}
            unknown = set(data) - allowed
            if unknown:
                raise ValueError(f"unknown fault fields {sorted(unknown)}")
            return asdict(self.inject_fault(**data))
        if parts == ["reset"] and method == "POST":
            self.reset()
            return {"reset": True}
        if parts == ["health"]:
            return {"ok": True, "url": self.url, "api_version": API_VERSION}
        if parts == ["requests"] and method == "GET":
            return {"counts": dict(self.request_counts()),
                    "routes": dict(self.request_counts(by="route")),
                    "idempotency_keys": dict(self.idempotency_key_counts()),
                    "requests": [asdict(r) for r in self.requests()]}
        if parts == ["state"] and method == "GET":
            return {"customers": self.customers(), "invoices": self.invoices(),
                    "invoice_items": self.invoice_items(), "events": self.events()}
        if parts == ["webhooks"] and method == "POST":
            self.configure_webhooks(data.get("url"), secret=data.get("secret"),
                                    events=data.get("events"))
            return {"url": self.webhook_url, "secret": self.webhook_secret}
        if parts == ["webhooks", "pause"] and method == "POST":
            self.pause_webhooks()
            return {"paused": True}
        if parts == ["webhooks", "release"] and method == "POST":
            return {"released": self.release_webhooks(data.get("order", "fifo"))}
        if len(parts) == 3 and parts[0] == "invoices" and method == "POST":
            actions: dict[str, Callable[..., JSON]] = {
                "pay": self.pay_invoice, "fail_payment": self.fail_payment,
                "finalize": self.finalize_invoice, "void": self.void_invoice,
                "mark_uncollectible": self.mark_uncollectible}
            if parts[2] in actions:
                return actions[parts[2]](parts[1], deliver=data.get("deliver", True))
        if len(parts) == 3 and parts[0] == "events" and parts[2] == "redeliver":
            self.redeliver(parts[1])
            return {"queued": parts[1]}
        raise KeyError(f"no control endpoint {method} {path}")


# --------------------------------------------------------------------------------------------
# Standalone entry point
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Stripe test double.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--strict-api-key", action="store_true")
    parser.add_argument("--webhook-url")
    parser.add_argument("--webhook-secret")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    double = StripeDouble(
        args.port, host=args.host, api_key=args.api_key, strict_api_key=args.strict_api_key,
        webhook_url=args.webhook_url, webhook_secret=args.webhook_secret, seed=args.seed,
        search_delay=args.search_delay)
    print(f"stripe double listening on {double.url}", flush=True)
    print(f"  api key:        {double.api_key}", flush=True)
    print(f"  webhook secret: {double.webhook_secret}", flush=True)
    print(f"  webhook url:    {double.webhook_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
