"""Slow and abusive connections: header and body read timeouts, a cap on open connections,
the process's file limit, and aborted uploads logged in one line.

A client that opens a connection and sends its headers a byte at a time, or stops halfway
through a body, holds a socket and a file descriptor for as long as it likes unless the server
closes it. Enough of them and the process runs out of file descriptors, and its jobs
(`enforce_limits` among them) with it. So:
- `HeaderTimeoutProtocol` (uvicorn's HTTP protocol) closes a connection whose request headers
  are not complete `header_timeout_s` after it opened (or after its previous response), and
  answers `503 overloaded` and closes any connection past `max_connections` at once;
- `BodyTimeout` (ASGI middleware) answers `408` and closes the connection when a request body
  stalls for `body_timeout_s`, and logs a client that went away mid-upload in one line;
- `raise_file_limit` lifts the soft file limit to the hard one at start.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def raise_file_limit() -> int:
    """Lift the soft limit on open files to the hard one; answer the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # a container may forbid it: keep what we have
        return soft
    return target


def _overloaded_response() -> bytes:
    body = orjson.dumps({"error": {"code": "overloaded", "message":
                                   "the server has as many connections open as it takes; "
                                   "retry after 1 s"}})
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header read timeout and a connection cap.

    The limits are class attributes, read from the settings on first use (each API process
    reads its own environment); a test serves a subclass with its own."""

    header_timeout_s: float | None = None  # float-ok: seconds
    max_connections: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        cls = type(self)
        if cls.header_timeout_s is None or cls.max_connections is None:
            from metering.config import get_settings

            settings = get_settings()
            cls.header_timeout_s = cls.header_timeout_s or settings.header_timeout_s
            cls.max_connections = cls.max_connections or settings.max_connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            transport.write(_overloaded_response())
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None and self.header_timeout_s is not None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a kept-alive connection: its headers, in time

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class BodyTimeout:
    """A request body that stalls for `timeout_s` gets `408` and its connection closed; a
    client gone mid-upload is one log line, not a traceback."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:  # float-ok: seconds
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        timed_out = False
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal timed_out, body_done
            if body_done or timed_out:
                return await receive() if not timed_out else {"type": "http.disconnect"}
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out:  # whatever the app makes of the missing body, the answer is 408
                if not started:
                    started = True
                    await _request_timeout(send, self.timeout_s)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except ClientDisconnect:
            if not timed_out:
                log.info("client disconnected during the request body",
                         extra={"path": scope["path"], "method": scope["method"]})
                return
        if timed_out and not started:
            await _request_timeout(send, self.timeout_s)


async def _request_timeout(send: Send, timeout_s: float) -> None:  # float-ok: seconds
    log.info("request body timed out", extra={"seconds": timeout_s})
    body = orjson.dumps({"error": {"code": "request_timeout", "message":
                                   f"no part of the request body arrived for {timeout_s:g} s"}})
    await send({"type": "http.response.start", "status": 408, "headers": [
        (b"content-type", b"application/json"), (b"connection", b"close"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
