"""Slow and abusive connections: the server closes them, caps them, and logs an aborted upload
in one line."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import Response

from billing.app import create_app
from metering.api.connections import BodyTimeout, HeaderTimeoutProtocol, raise_file_limit
from metering.config import Settings


class QuickProtocol(HeaderTimeoutProtocol):
    header_timeout_s = 0.3
    max_connections = 3


@pytest.fixture
def server(database_url: str, engine: Engine) -> Iterator[tuple[str, int]]:
    settings = Settings(database_url=None, run_scheduler=False, body_timeout_s=0.3)
    app: FastAPI = create_app(settings, database_url=database_url, migrate_on_start=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", http=QuickProtocol)
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not runner.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield ("127.0.0.1", port)
    runner.should_exit = True
    thread.join(10)
    app.state.engine.dispose()
    app.state.read_engine.dispose()


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a generous safety timeout only)."""
    sock.settimeout(30)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_client_that_never_finishes_its_headers_is_closed(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert read_all(sock) == b""  # closed by the server, nothing answered


def test_a_stalled_body_gets_408_and_the_connection_is_closed(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[{")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"request_timeout"' in answer


def test_connections_past_the_cap_are_refused_with_overloaded(server: tuple[str, int]) -> None:
    held = [socket.create_connection(server) for _ in range(3)]
    try:
        with socket.create_connection(server) as extra:
            answer = read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b'"overloaded"' in answer and b"retry-after: 1" in answer
    finally:
        for sock in held:
            sock.close()


def test_an_aborted_upload_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        async for _ in Request(scope, receive).stream():
            pass
        await Response(b"")(scope, receive, send)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent to a client that left")

    scope = {"type": "http", "method": "POST", "path": "/v1/events", "headers": []}
    with caplog.at_level(logging.INFO):
        asyncio.run(BodyTimeout(app, timeout_s=5)(scope, receive, send))
    records = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is None


def test_the_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert raise_file_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 256 or hard <= 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
