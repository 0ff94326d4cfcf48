"""The orchestrator's client against the service over real HTTP, with real network faults
made by a TCP proxy in between (refused connections, answers lost after the commit)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from metering_client import Backpressure, MeteringClient, Rejection
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings
from metering.db import transaction
from tests.conftest import Keys, LiveServer, event
from tests.faults.proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def fleet(sandboxes: int, seconds: int, prefix: str = "c") -> list[dict[str, Any]]:
    """Created, one sample a second, killed: for each of `sandboxes` sandboxes."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    events = []
    for i in range(sandboxes):
        ids = {"sandbox": f"{prefix}_sbx_{i}", "execution": f"{prefix}_exe_{i}", "team": "team_client"}
        events.append(event("created", **ids, time=iso(t0), vcpu=2, memory_mib=512))
        events.extend(event("host_stats", **ids, time=iso(t0 + timedelta(seconds=s, milliseconds=5)),
                            cpu_pct=12.5, memory_used_mib=100) for s in range(seconds))
        events.append(event("killed", **ids, time=iso(t0 + timedelta(seconds=seconds)), reason="request"))
    return events


def stored(engine: Engine) -> tuple[int, int]:
    """(lifecycle events, samples) in the database, pending or folded."""
    with engine.connect() as conn:
        lifecycle = conn.execute(text("SELECT count(*) FROM lifecycle_events")).scalar_one()
        samples = conn.execute(text(
            "SELECT (SELECT count(*) FROM host_stats_pending)"
            " + (SELECT coalesce(sum(samples), 0) FROM sample_minutes)")).scalar_one()
    return int(lifecycle), int(samples)


def wait_until(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy(live_server: LiveServer) -> Iterator[TcpProxy]:
    port = int(live_server.url.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port).start()
    yield proxy
    proxy.close()


def fast_client(url: str, key: str, **options: Any) -> MeteringClient:
    defaults: dict[str, Any] = {"max_batch": 100, "max_delay_s": 0.05, "backoff_max_s": 0.3,
                                "timeout_s": 5}
    return MeteringClient(url, key, **{**defaults, **options})


def test_events_arrive_once_and_a_partial_batch_goes_out_on_time(
    live_server: LiveServer, api_keys: Keys, engine: Engine
) -> None:
    events = fleet(5, 100)
    with fast_client(live_server.url, api_keys.ingest) as client:
        for e in events:
            client.emit(e)
        assert client.flush(30)
        stats = client.stats()
        assert (stats.accepted, stats.duplicates, stats.rejected, stats.retries) == (510, 0, 0, 0)
        assert stored(engine) == (10, 500)
        # Fewer events than a batch, no flush: the age limit sends them.
        client.emit(event("host_stats", sandbox="c_sbx_0", execution="c_exe_0", team="team_client",
                          time=iso(datetime.now(UTC)), id="late-1"))
        wait_until(lambda: client.stats().acknowledged == 511, 5)


def test_batches_spool_while_the_service_is_unreachable_and_are_delivered_after(
    proxy: TcpProxy, api_keys: Keys, engine: Engine, tmp_path: Path
) -> None:
    proxy.refuse()
    spool = tmp_path / "spool.jsonl"
    events = fleet(10, 198)  # 2,000 events
    with fast_client(proxy.url, api_keys.ingest, spool_path=spool, max_buffer=500) as client:
        for e in events:  # more than max_buffer: the spool, not memory, takes the outage
            client.emit(e, timeout=10)
        wait_until(lambda: client.stats().spool_pending == 2000)
        assert spool.stat().st_size > 0
        assert client.stats().buffered == 0
        proxy.accept()
        assert client.flush(30)
        stats = client.stats()
    assert (stats.accepted, stats.spooled, stats.spool_pending) == (2000, 2000, 0)
    assert stats.failures > 0
    assert spool.stat().st_size == 0  # emptied once everything in it was acknowledged
    assert stored(engine) == (20, 1980)


def test_answers_lost_after_the_commit_come_back_as_duplicates_not_double_counts(
    proxy: TcpProxy, api_keys: Keys, engine: Engine
) -> None:
    proxy.drop_responses()
    events = fleet(3, 98)  # 300 events, one batch: while the service looks down, the
    # client probes with its oldest batch only
    with fast_client(proxy.url, api_keys.ingest, max_batch=1000) as client:
        for e in events:
            client.emit(e)
        # The service has every event and the client has tried again, so the first answer
        # was swallowed (not merely late) before answers flow again.
        wait_until(lambda: stored(engine) == (6, 294) and client.stats().retries > 0)
        assert client.stats().acknowledged == 0  # ... and the client has heard of none
        proxy.drop_responses(False)
        assert client.flush(30)
        stats = client.stats()
    assert (stats.accepted, stats.duplicates) == (0, 300)
    assert stats.retries > 0
    assert stored(engine) == (6, 294)


CRASHING_ORCHESTRATOR = """
import json, sys, time
from metering_client import MeteringClient
url, key, spool, path = sys.argv[1:]
events = json.load(open(path))
client = MeteringClient(url, key, spool_path=spool, max_batch=100, max_delay_s=0.05,
                        backoff_max_s=0.2, timeout_s=2)
for e in events:
    client.emit(e)
while client.stats().spool_pending < len(events):
    time.sleep(0.02)
print("spooled", flush=True)
time.sleep(120)
"""


def test_the_spool_is_replayed_by_the_next_client_after_a_crash(
    live_server: LiveServer, api_keys: Keys, engine: Engine, tmp_path: Path
) -> None:
    events = fleet(4, 148)  # 600 events
    (tmp_path / "events.json").write_text(json.dumps(events))
    spool = tmp_path / "spool.jsonl"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    orchestrator = subprocess.Popen(
        [sys.executable, "-c", CRASHING_ORCHESTRATOR, dead, api_keys.ingest, str(spool),
         str(tmp_path / "events.json")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert orchestrator.stdout is not None
        assert orchestrator.stdout.readline().strip() == "spooled"
    finally:
        os.kill(orchestrator.pid, signal.SIGKILL)  # a crash: no close, no flush
        orchestrator.wait()
    assert stored(engine) == (0, 0)
    with fast_client(live_server.url, api_keys.ingest, spool_path=spool) as client:
        assert client.stats().replayed == 600
        assert client.flush(30)
        assert client.stats().accepted == 600
    assert stored(engine) == (8, 592)


def test_emit_blocks_when_the_buffer_is_full_and_resumes_when_the_service_is_back(
    proxy: TcpProxy, api_keys: Keys, engine: Engine
) -> None:
    proxy.refuse()
    events = fleet(1, 19)  # 21 events
    client = fast_client(proxy.url, api_keys.ingest, max_batch=5, max_buffer=20)
    try:
        for e in events[:20]:
            client.emit(e, timeout=0)
        started = time.monotonic()
        with pytest.raises(Backpressure):
            client.emit(events[20], timeout=0.3)
        assert time.monotonic() - started >= 0.3
        blocked = threading.Thread(target=client.emit, args=(events[20],), kwargs={"timeout": 20})
        blocked.start()
        time.sleep(0.3)
        assert blocked.is_alive()  # still waiting for room
        proxy.accept()
        blocked.join(20)
        assert not blocked.is_alive()
        assert client.flush(30)
        assert client.stats().accepted == 21
    finally:
        client.close(timeout=5)
    assert stored(engine) == (2, 19)


def test_too_large_batches_are_split_until_they_fit(
    live_server: LiveServer, api_keys: Keys, engine: Engine, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "max_body_bytes", 12_000)
    events = fleet(2, 148)  # 300 events of ~300 bytes: batches of 100 are ~30 kB
    with fast_client(live_server.url, api_keys.ingest, max_delay_s=1) as client:
        for e in events:
            client.emit(e)
        assert client.flush(30)
        stats = client.stats()
    assert (stats.accepted, stats.rejected) == (300, 0)
    assert stats.sent > 300  # the whole batches went first and were refused
    assert stored(engine) == (4, 296)


def test_refused_events_are_counted_and_handed_to_the_dead_letter_hook(
    live_server: LiveServer, api_keys: Keys, engine: Engine
) -> None:
    dead_letters: list[Rejection] = []
    bad = event("created", time=iso(datetime.now(UTC)), vcpu=0, memory_mib=512, id="bad-1")
    good = event("created", time=iso(datetime.now(UTC)), vcpu=1, memory_mib=512, id="good-1",
                 sandbox="sbx_2", execution="exe_2")
    with fast_client(live_server.url, api_keys.ingest, on_rejected=dead_letters.extend) as client:
        client.emit(bad)
        client.emit(good)
        assert client.flush(10)
        assert (client.stats().accepted, client.stats().rejected) == (1, 1)
    assert [(r.event["id"], r.status, r.code) for r in dead_letters] == [("bad-1", 200, "invalid")]
    # A key the service does not know: 401 is not retried; both events are dead letters.
    dead_letters.clear()
    with fast_client(live_server.url, "mk_not_a_key", on_rejected=dead_letters.extend) as client:
        client.emit(good)
        client.emit(bad)
        assert client.flush(10)
        assert (client.stats().rejected, client.stats().retries) == (2, 0)
    assert sorted((r.event["id"], r.status) for r in dead_letters) == [("bad-1", 401), ("good-1", 401)]
    assert stored(engine) == (1, 0)


def test_admissions_and_the_kill_order_feed(
    live_server: LiveServer, api_keys: Keys, app: FastAPI, sessions: sessionmaker[Session]
) -> None:
    from metering.enforcement.service import KillDecision, issue_kill_orders

    with fast_client(live_server.url, api_keys.ingest) as client:
        first = client.admit("team_adm", "sbx_a", vcpu=2, memory_mib=1024)
        again = client.admit("team_adm", "sbx_a", vcpu=2, memory_mib=1024)
        too_big = client.admit("team_adm", "sbx_b", vcpu=64, memory_mib=1024)
        assert first.admitted and first.lease_id and first.lease_id == again.lease_id
        assert (too_big.admitted, too_big.status, too_big.reason) == (False, 403, "resources_exceed_plan")
        with transaction(sessions) as session:
            issue_kill_orders(session, [KillDecision("team_adm", "sbx_a", "exe_a", "max_duration")],
                              datetime.now(UTC))
        page = client.enforcement_actions()
        assert [(o["sandbox_id"], o["reason"]) for o in page.data] == [("sbx_a", "max_duration")]
        assert client.enforcement_actions(after=page.next_cursor).data == []


def test_the_spool_compacts_acknowledged_records_and_survives_a_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metering_client.client import ClientError, _Spool

    monkeypatch.setattr(_Spool, "COMPACT_BYTES", 200)
    path = tmp_path / "spool.jsonl"
    spool = _Spool(path, max_bytes=10**6)
    bodies = {seq: json.dumps([{"id": f"e{seq}-{i}", "source": "s"} for i in range(3)]).encode()
              for seq in range(1, 11)}
    for seq, body in bodies.items():
        spool.append(seq, body, 3)
    with pytest.raises(ClientError):
        _Spool(path, max_bytes=10**6)  # one client per spool
    size = path.stat().st_size
    for seq in range(1, 8):
        spool.ack(seq)
    assert path.stat().st_size < size / 2  # rewritten without the acknowledged batches
    assert [spool.read(seq) for seq in (8, 9, 10)] == [bodies[8], bodies[9], bodies[10]]
    spool.ack(9)
    spool.close()
    with open(path, "ab") as f:
        f.write(b'{"batch":11,"events":[{"id"')  # a crash in the middle of an append
    reopened = _Spool(path, max_bytes=10**6)
    assert reopened.load() == [(8, 3), (10, 3)]
    assert reopened.read(10) == bodies[10]
    reopened.ack(8)
    reopened.ack(10)
    assert path.stat().st_size == 0  # nothing pending: emptied
    reopened.close()
