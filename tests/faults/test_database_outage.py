"""PostgreSQL unreachable in the middle of an ingest: the service answers 503 meanwhile,
accepts again within 5 s of the database coming back (no restart), and nothing is lost.

The machine's PostgreSQL is shared, so it is never stopped: the service reaches it through a
TCP proxy this test controls, and "down" is the proxy cutting every connection and refusing
new ones.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from metering_client import MeteringClient

from tests.faults.conftest import Fleet, Service, read_usage, stored_counts
from tests.faults.proxy import TcpProxy

pytestmark = pytest.mark.faults

OUTAGE_S = 3.0


def test_database_outage_answers_503_then_recovers_within_5_s_losing_nothing(
    fault_database: str, services: list[Service], tmp_path: Path
) -> None:
    direct = urlsplit(fault_database)
    proxy = TcpProxy(direct.hostname or "127.0.0.1", direct.port or 5432).start()
    through_proxy = urlunsplit(direct._replace(netloc=f"{direct.username}@127.0.0.1:{proxy.port}"))
    fleet = Fleet(sandboxes=100, base_lifetime=200, spread=100,
                  t0=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5))
    total = fleet.lifecycle_count + fleet.sample_count  # 24,900 samples + 220 lifecycle
    service = Service(through_proxy, workers=1, scheduler=True)
    services.append(service)
    try:
        service.start()
        ingest_key, finance_key = service.create_key("ingest"), service.create_key("finance")
        events = list(fleet.events())
        # A probe posts an event of the fleet again and again: a duplicate when it lands,
        # so it changes nothing, and its answers time the outage.
        probe_answers: list[tuple[float, int]] = []
        probing = threading.Event()
        probing.set()

        def probe() -> None:
            with httpx.Client(base_url=service.url, timeout=5, headers={
                    "Authorization": f"Bearer {ingest_key}"}) as http:
                while probing.is_set():
                    try:
                        status = http.post("/v1/events", json=events[:1]).status_code
                    except httpx.HTTPError:
                        status = 0
                    probe_answers.append((time.monotonic(), status))
                    time.sleep(0.05)

        client = MeteringClient(service.url, ingest_key, max_batch=1000, max_delay_s=0.1,
                                spool_path=tmp_path / "spool.jsonl", concurrency=2,
                                backoff_base_s=0.05, backoff_max_s=0.5, timeout_s=10)
        prober = threading.Thread(target=probe)
        prober.start()
        for event in events:
            client.emit(event, timeout=60)
        while client.stats().acknowledged < total // 4:
            time.sleep(0.01)

        down_at = time.monotonic()
        proxy.refuse()
        time.sleep(OUTAGE_S)
        ready_while_down = httpx.get(service.url + "/readyz", timeout=5).status_code
        up_at = time.monotonic()
        proxy.accept()

        assert client.flush(60), client.stats()
        probing.clear()
        prober.join(10)
        stats = client.stats()
        client.close()

        during = [status for at, status in probe_answers if down_at + 0.5 < at < up_at]
        after = [(at, status) for at, status in probe_answers if at > up_at]
        recovered_at = next(at for at, status in after if status == 200)
        recovery = recovered_at - up_at
        print(f"\n[faults] database cut for {OUTAGE_S:.0f} s during ingest of {total:,} events: "
              f"{len(during)} probe answers meanwhile, statuses {sorted(set(during))}; "
              f"first 200 {recovery:.2f} s after the database returned; client: accepted "
              f"{stats.accepted:,}, duplicates {stats.duplicates:,}, retries {stats.retries}, "
              f"spooled {stats.spooled:,}", flush=True)
        assert during and set(during) == {503}
        assert ready_while_down == 503
        assert recovery < 5
        assert httpx.get(service.url + "/readyz", timeout=5).status_code == 200
        assert (stats.acknowledged, stats.rejected) == (total, 0)
        assert stats.accepted + stats.duplicates == total
        assert stats.failures > 0  # the client did see the outage
        assert stored_counts(fault_database) == (fleet.lifecycle_count, fleet.sample_count,
                                                 fleet.sandboxes)
        assert read_usage(service, finance_key, fleet) == fleet.expected_usage()
    finally:
        service.stop()
        proxy.close()
