"""The signed orchestrator channel: signatures, and delivery to a real HTTP receiver that
fails, retried with backoff until acknowledged (contract section 3)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings
from metering.core import clock
from metering.core.clock import utc_now
from metering.db import transaction
from metering.enforcement import jobs as jobs_enforcement
from metering.enforcement import service
from metering.enforcement.delivery import DeliveryPolicy, next_attempt_at, retry_delay
from metering.enforcement.outbox import enqueue_message
from metering.enforcement.signing import (
    MESSAGE_ID_HEADER,
    SIGNATURE_HEADER,
    sign,
    verify_signature,
)
from metering.errors import InvalidSignature

SECRET = "whsec_test_0123456789"
FAST = DeliveryPolicy(backoff_base_s=0.02, backoff_cap_s=0.1, timeout_s=2.0)


# --------------------------------------------------------------------------- signatures


def test_a_signature_verifies_and_a_forged_or_stale_one_is_rejected() -> None:
    body = b'{"id":"msg_1","type":"kill_order"}'
    now = 1_790_000_000
    header = sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    assert verify_signature(SECRET, header, body, now=now + 299) == now
    assert verify_signature(SECRET, header, body.decode(), now=now) == now  # str body too

    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature("whsec_someone_else", header, body, now=now)
    forged = sign("whsec_someone_else", body, now)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(SECRET, forged, body, now=now)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(SECRET, header, body.replace(b"kill_order", b"kill_orderz"), now=now)
    with pytest.raises(InvalidSignature, match="stale"):
        verify_signature(SECRET, header, body, now=now + 301)
    with pytest.raises(InvalidSignature, match="stale"):
        verify_signature(SECRET, header, body, now=now - 301)
    # A replay of a genuine signature under a new timestamp does not match.
    replayed = header.replace(f"t={now}", f"t={now + 1000}")
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(SECRET, replayed, body, now=now + 1000)
    for broken in (None, "", "garbage", f"t={now}", "v1=abc", "t=soon,v1=abc"):
        with pytest.raises(InvalidSignature):
            verify_signature(SECRET, broken, body, now=now)
    # During a secret rotation both signatures may be sent: either one is enough.
    rotated = f"{sign('whsec_old', body, now)},v1={header.split('v1=')[1]}"
    assert verify_signature(SECRET, rotated, body, now=now) == now


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = DeliveryPolicy(backoff_base_s=1.0, backoff_cap_s=3600.0)
    assert [retry_delay(n, policy, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert retry_delay(3, policy, rand=lambda: 0.0) == 2.0  # half of 4 at the least
    assert retry_delay(40, policy, rand=lambda: 1.0) == 3600.0
    assert retry_delay(10_000, policy, rand=lambda: 1.0) == 3600.0
    # Never past the message's max age; at or after it: abandon.
    created = utc_now()
    day = DeliveryPolicy(max_age_s=24 * 3600)
    late = created + timedelta(hours=23, minutes=59)
    assert next_attempt_at(created, 30, late, day) == created + timedelta(hours=24)
    assert next_attempt_at(created, 30, created + timedelta(hours=24), day) is None


# --------------------------------------------------------------------------- a real receiver


@dataclass
class Receiver:
    """An orchestrator's webhook endpoint: verifies every signature, stores by message id,
    and answers 500 to its first `fail_first` requests (after reading them, as a receiver
    that crashes before acknowledging would)."""

    fail_first: int
    requests: int = 0
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver(fail_first=5)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                verify_signature(SECRET, self.headers[SIGNATURE_HEADER], body)
            except InvalidSignature:
                with state.lock:
                    state.bad_signatures += 1
                self.send_response(400)
                self.end_headers()
                return
            message = json.loads(body)
            assert self.headers[MESSAGE_ID_HEADER] == message["id"]
            assert self.headers["Content-Type"] == "application/json"
            with state.lock:
                state.requests += 1
                failing = state.requests <= state.fail_first
                if message["id"] in state.received:
                    state.duplicates += 1
                state.received[message["id"]] = message
            self.send_response(500 if failing else 204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hooks/metering"
    finally:
        server.shutdown()
        server.server_close()


def outbox_rows(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with transaction(sessions) as session:
        return [dict(r._mapping) for r in session.execute(text(
            "SELECT id, type, attempts, delivered_at, abandoned_at, last_error, next_attempt_at "
            "FROM outbox_messages ORDER BY seq"))]


def queue_some(sessions: sessionmaker[Session]) -> set[str]:
    with transaction(sessions) as session:
        issued = service.issue_kill_orders(session, [
            service.KillDecision("team_1", f"sbx_{i}", f"exe_{i}", "credit_exhausted")
            for i in range(3)], utc_now())
        note = enqueue_message(session, type="credit.threshold", team_id="team_1",
                               payload={"team_id": "team_1", "threshold_pct": 100},
                               key="credit.threshold:team_1:100:100")
    assert len(issued) == 3 and note is not None
    return {r["id"] for r in outbox_rows(sessions)}


def test_a_failing_receiver_still_gets_every_message_signed_and_deduplicated_by_id(
    sessions: sessionmaker[Session], receiver: tuple[Receiver, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    state, url = receiver
    ids = queue_some(sessions)
    settings = Settings(orchestrator_webhook_url=url, orchestrator_webhook_secret=SECRET)
    caplog.set_level(logging.DEBUG)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        jobs_enforcement.deliver_webhooks(sessions, settings, FAST)
        if all(r["delivered_at"] for r in outbox_rows(sessions)):
            break
        time.sleep(0.02)

    rows = outbox_rows(sessions)
    assert all(r["delivered_at"] is not None and r["abandoned_at"] is None for r in rows)
    assert set(state.received) == ids  # every message, once each after deduplication
    assert state.requests == len(ids) + 5 and state.duplicates == 5
    assert state.bad_signatures == 0
    assert sum(r["attempts"] for r in rows) == len(ids) + 5
    kill = [m for m in state.received.values() if m["type"] == "kill_order"]
    assert sorted(m["data"]["execution_id"] for m in kill) == ["exe_0", "exe_1", "exe_2"]
    assert {m["data"]["reason"] for m in kill} == {"credit_exhausted"}
    assert SECRET not in caplog.text
    # Nothing is due any more: another run sends nothing.
    before = state.requests
    jobs_enforcement.deliver_webhooks(sessions, settings, FAST)
    assert state.requests == before


def test_two_workers_delivering_at_once_send_each_message_once(
    sessions: sessionmaker[Session], receiver: tuple[Receiver, str],
) -> None:
    state, url = receiver
    state.fail_first = 0
    with transaction(sessions) as session:
        service.issue_kill_orders(session, [
            service.KillDecision("team_1", f"sbx_{i}", f"exe_{i}", "max_duration")
            for i in range(40)], utc_now())
    settings = Settings(orchestrator_webhook_url=url, orchestrator_webhook_secret=SECRET)
    barrier = threading.Barrier(2)
    small = DeliveryPolicy(batch=5, concurrency=2)

    def worker() -> None:
        barrier.wait()
        jobs_enforcement.deliver_webhooks(sessions, settings, small)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(state.received) == 40 and state.requests == 40 and state.duplicates == 0
    assert all(r["delivered_at"] and r["attempts"] == 1 for r in outbox_rows(sessions))


def test_failures_back_off_and_record_the_error(
    sessions: sessionmaker[Session], receiver: tuple[Receiver, str],
) -> None:
    state, url = receiver
    state.fail_first = 10**6
    queue_some(sessions)
    settings = Settings(orchestrator_webhook_url=url, orchestrator_webhook_secret=SECRET)
    started = utc_now()
    result = jobs_enforcement.deliver_webhooks(
        sessions, settings, DeliveryPolicy(backoff_base_s=60, backoff_cap_s=3600))
    finished = utc_now()
    assert (result.delivered, result.failed, result.abandoned) == (0, 4, 0)
    for row in outbox_rows(sessions):
        assert row["attempts"] == 1 and row["last_error"] == "HTTP 500: "
        # 30..60 s after the failure (60 s base, jittered down to half at most).
        assert started + timedelta(seconds=30) <= row["next_attempt_at"]
        assert row["next_attempt_at"] <= finished + timedelta(seconds=60)
    # Not due yet: nothing is sent.
    again = jobs_enforcement.deliver_webhooks(sessions, settings, FAST)
    assert (again.delivered, again.failed) == (0, 0) and state.requests == 4


def test_after_the_max_age_a_failing_message_is_abandoned_and_visible(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture,
) -> None:
    queue_some(sessions)
    # Nobody listens on this port: connection refused, a real network failure.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(orchestrator_webhook_url=f"http://127.0.0.1:{port}/",
                        orchestrator_webhook_secret=SECRET, webhook_max_age_s=24 * 3600)
    first = jobs_enforcement.deliver_webhooks(sessions, settings)
    assert first.failed == 4
    assert all(r["last_error"].startswith("ConnectError") for r in outbox_rows(sessions))
    clock.set_offset(timedelta(hours=24, seconds=1))
    caplog.set_level(logging.WARNING)
    last = jobs_enforcement.deliver_webhooks(sessions, settings)
    assert last.abandoned == 4
    rows = outbox_rows(sessions)
    assert all(r["abandoned_at"] is not None and r["delivered_at"] is None for r in rows)
    assert all(r["attempts"] == 2 for r in rows)
    assert "outbox message abandoned" in caplog.text
    assert jobs_enforcement.deliver_webhooks(sessions, settings).abandoned == 0


def test_without_a_url_or_secret_messages_wait(sessions: sessionmaker[Session]) -> None:
    queue_some(sessions)
    for settings in (Settings(), Settings(orchestrator_webhook_url="http://127.0.0.1:9/"),
                     Settings(orchestrator_webhook_secret=SECRET)):
        result = jobs_enforcement.deliver_webhooks(sessions, settings)
        assert (result.delivered, result.failed, result.abandoned) == (0, 0, 0)
    assert all(r["attempts"] == 0 and r["delivered_at"] is None for r in outbox_rows(sessions))
