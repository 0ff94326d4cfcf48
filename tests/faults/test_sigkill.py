"""The service SIGKILLed again and again while the orchestrator's client streams 100,000+
events into it: afterwards every event is stored once and every team's usage is exact."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from metering_client import MeteringClient

from tests.faults.conftest import Fleet, Service, read_usage, stored_counts

pytestmark = pytest.mark.faults

KILLS = 3


def test_sigkill_during_ingest_loses_nothing_and_counts_nothing_twice(
    fault_database: str, services: list[Service], tmp_path: Path
) -> None:
    # 101,125 samples + 550 lifecycle events over ~9 minutes ending a minute ago: the older
    # samples are folded by the service's scheduler while the kills go on.
    fleet = Fleet(sandboxes=250, base_lifetime=320,
                  t0=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10))
    total = fleet.lifecycle_count + fleet.sample_count
    assert total >= 100_000
    service = Service(fault_database, workers=1, scheduler=True)
    services.append(service)
    starting = threading.Thread(target=service.start)
    starting.start()
    events = list(fleet.events())  # meanwhile
    starting.join()
    ingest_key, finance_key = service.create_key("ingest"), service.create_key("finance")

    client = MeteringClient(service.url, ingest_key, max_batch=2000, max_delay_s=0.2,
                            spool_path=tmp_path / "spool.jsonl", concurrency=3,
                            backoff_base_s=0.05, backoff_max_s=0.5, timeout_s=10)
    kills: list[tuple[int, float]] = []  # (events acknowledged at the kill, seconds down)
    failure: list[BaseException] = []
    rng = random.Random(7)

    def killer() -> None:
        try:
            for k in range(KILLS):
                threshold = total * (k + 1) // (KILLS + 2)
                while client.stats().acknowledged < threshold:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, 0.3))  # somewhere inside a batch, not on its edge
                acknowledged = client.stats().acknowledged
                down = time.monotonic()
                service.kill()
                service.start()
                kills.append((acknowledged, time.monotonic() - down))
        except BaseException as exc:  # surfaced in the test's thread
            failure.append(exc)

    started = time.monotonic()
    chaos = threading.Thread(target=killer)
    chaos.start()
    for event in events:
        client.emit(event, timeout=60)
    chaos.join(120)
    assert not failure, failure
    assert client.flush(60), client.stats()
    elapsed = time.monotonic() - started
    stats = client.stats()
    client.close()

    print(f"\n[faults] SIGKILL x{len(kills)} during ingest of {total:,} events in {elapsed:.1f} s; "
          f"kills at {[a for a, _ in kills]} acknowledged; down "
          f"{', '.join(f'{d:.1f}' for _, d in kills)} s; client: accepted {stats.accepted:,}, "
          f"duplicates {stats.duplicates:,}, retries {stats.retries}, spooled {stats.spooled:,}",
          flush=True)
    assert len(kills) == KILLS
    assert (stats.acknowledged, stats.rejected) == (total, 0)
    # Each event acknowledged once: new, or stored before a kill and answered as a duplicate.
    assert stats.accepted + stats.duplicates == total
    assert stored_counts(fault_database) == (fleet.lifecycle_count, fleet.sample_count,
                                             fleet.sandboxes)
    assert read_usage(service, finance_key, fleet) == fleet.expected_usage()
