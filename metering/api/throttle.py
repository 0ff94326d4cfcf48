"""Per-key rate and concurrency limits, and admission of reads by class, before any work.

An ASGI middleware: a request over its key's allowance is answered `429 rate_limited` with
`Retry-After` and `RateLimit-*` headers before its body is read or the database is asked; a
read past the process's read capacity is answered `503 overloaded`. Limits are per role
(`Settings.key_limits`) and per key id (`Settings.key_limit_overrides`).

A request costs one token; a request whose answer is large costs more, charged once it is
known (`charge`): a year of hourly usage is 8,760 points and costs a token per 1,000 of them
besides its own, so a key's allowance bounds the work it causes, not only its request count.
A key whose bucket a charge took below zero waits until it refills.

The key is known by a digest of the presented token. Its role is learned when the token is
authenticated (`remember`), so a key this process has not yet seen authenticated has the
`unresolved` allowance; the allowance only ever refuses early, it never grants access.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from metering.api import bulkhead
from metering.config import KeyLimit, Settings, _default_key_limits

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LIMIT_DEFAULTS = _default_key_limits()
_MAX_REMEMBERED = 100_000


@dataclass(frozen=True, slots=True)
class KnownKey:
    key_id: str
    role: str


_known: dict[bytes, KnownKey] = {}


def fingerprint(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


def remember(token: str, key_id: str, role: str) -> None:
    """Called once a token is authenticated: its key's allowance applies from now on."""
    if len(_known) > _MAX_REMEMBERED:
        _known.clear()
    _known[fingerprint(token)] = KnownKey(key_id, role)


def forget_all() -> None:
    _known.clear()


CHARGE = "metering.throttle.charge"  # the scope entry a handler adds its extra cost to
POINTS_PER_TOKEN = 1000
# Reads in flight of a key this process has not authenticated yet (see `Throttle`).
UNRESOLVED_READS_IN_FLIGHT = 1


class Charge:
    """The extra tokens a request costs beyond its first, added by its handler."""

    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens = 0


def charge(scope: Scope | dict[str, object], points: int) -> None:
    """Charge the request's key for an answer of `points` items (series points, rows): a
    token per `POINTS_PER_TOKEN` beyond the request's own. Call it on the event loop."""
    found = scope.get(CHARGE)
    if isinstance(found, Charge):
        found.tokens += points // POINTS_PER_TOKEN


def limit_for(settings: Settings, known: KnownKey | None) -> KeyLimit:
    if known is not None:
        override = settings.key_limit_overrides.get(known.key_id)
        if override is not None:
            return override
    role = known.role if known is not None else "unresolved"
    return settings.key_limits.get(role) or _LIMIT_DEFAULTS.get(role) or KeyLimit()


@dataclass(slots=True)
class _Bucket:
    tokens: float  # float-ok: a token bucket's level
    at: float  # float-ok: monotonic seconds
    in_flight: int = 0


class KeyState:
    """Token buckets and in-flight counts per key (one process; the event loop's thread)."""

    def __init__(self) -> None:
        self._buckets: dict[bytes, _Bucket] = {}

    def bucket(self, fp: bytes, limit: KeyLimit, now: float) -> _Bucket:  # float-ok
        found = self._buckets.get(fp)
        if found is None:
            if len(self._buckets) > _MAX_REMEMBERED:
                self._buckets = {k: b for k, b in self._buckets.items() if b.in_flight}
            found = _Bucket(float(max(limit.burst, 1)), now)  # float-ok: tokens, not money
            self._buckets[fp] = found
        elif limit.rate:
            capacity = float(max(limit.burst, 1))  # float-ok
            found.tokens = min(capacity, found.tokens + (now - found.at) * limit.rate)
            found.at = now
        return found


def _token(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


SPREAD_S = 1.0  # the longest a refused read's answer is held


async def _spread(klass: bulkhead.RouteClass, within: float) -> float:  # float-ok: seconds
    """Hold a refused read's `429` for a random part of the wait it is told (at most 1 s),
    and answer how long it was held (`Retry-After` counts the rest).

    Clients that honour `Retry-After` to the second come back together: 300 of them refused
    at once return as one wave every second, and each wave keeps the event loop, and the
    admissions it serves, waiting while it is refused (`bench.abuse`). Answered at random
    moments, they come back spread over the second. The client loses nothing: it could not
    have been served sooner. The orchestrator's path is never held."""
    if klass != "read" or within <= 0:
        return 0.0
    held = random.uniform(0.0, min(within, SPREAD_S))  # noqa: S311 (spreading, not secrecy)
    await asyncio.sleep(held)
    return held


async def _answer(send: Send, status: int, code: str, message: str,
                  headers: list[tuple[bytes, bytes]]) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


class Throttle:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = KeyState()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        klass = bulkhead.route_class(scope["path"])
        if klass == "health":
            await self.app(scope, receive, send)
            return
        token = _token(scope)
        bucket = None
        extra: Charge | None = None
        headers: list[tuple[bytes, bytes]] = []
        if token is not None:
            fp = fingerprint(token)
            found = _known.get(fp)
            limit = limit_for(self.settings, found)
            if found is None and klass == "read" and (
                    not limit.concurrency or limit.concurrency > UNRESOLVED_READS_IN_FLIGHT):
                # A key not yet authenticated here reads one request at a time until its
                # first answer tells this process its role: a burst of reads from a key met
                # for the first time cannot fill the read pool before its own limits apply.
                limit = limit.model_copy(update={"concurrency": UNRESOLVED_READS_IN_FLIGHT})
            now = time.monotonic()
            bucket = self.keys.bucket(fp, limit, now)
            if limit.rate:
                headers = _rate_headers(limit, bucket)
                if bucket.tokens < 1:
                    wait = (1 - bucket.tokens) / limit.rate
                    wait -= await _spread(klass, wait)
                    await _answer(send, 429, "rate_limited",
                                  f"this key may make {limit.rate:g} requests a second "
                                  f"(bursts of {max(limit.burst, 1)}); retry after "
                                  f"{math.ceil(wait)} s", [
                                      (b"retry-after", str(math.ceil(wait)).encode()),
                                      *headers])
                    return
            if limit.concurrency and bucket.in_flight >= limit.concurrency:
                await _spread(klass, 1.0)
                await _answer(send, 429, "rate_limited",
                              f"this key may have {limit.concurrency} requests in flight "
                              "at once; retry after 1 s", [(b"retry-after", b"1"), *headers])
                return
            if limit.rate:
                bucket.tokens -= 1
                extra = Charge()
        capacity = bulkhead.capacity(scope["app"].state) if klass == "read" else None
        if capacity is not None and not capacity.try_enter_read():
            await _answer(send, 503, "overloaded",
                          "the service is answering as many reads as it can; retry after 1 s",
                          [(b"retry-after", b"1")])
            return
        if bucket is not None:
            bucket.in_flight += 1
        if extra is not None:
            scope[CHARGE] = extra
        try:
            if headers:
                await self.app(scope, receive, _with_headers(send, headers))
            else:
                await self.app(scope, receive, send)
        finally:
            if bucket is not None:
                bucket.in_flight -= 1
                if extra is not None and extra.tokens:
                    # May go below zero: the key then waits for its bucket to refill.
                    bucket.tokens -= extra.tokens
            if capacity is not None:
                capacity.leave_read()


def _rate_headers(limit: KeyLimit, bucket: _Bucket) -> list[tuple[bytes, bytes]]:
    capacity = max(limit.burst, 1)
    remaining = max(int(bucket.tokens) - 1, 0)
    reset = math.ceil((capacity - bucket.tokens) / limit.rate) if limit.rate else 0
    return [(b"ratelimit-limit", str(capacity).encode()),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(max(reset, 0)).encode()),
            (b"ratelimit-policy", f"{capacity};w={math.ceil(capacity / limit.rate)}".encode())]


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return wrapped
