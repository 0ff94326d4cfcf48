"""Property: whatever the duplicates, arrival order and batch cuts, the usage API equals a
direct integration of the execution history, to the millisecond, and months add up."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from metering.executions import jobs as execution_jobs
from metering.ingest import jobs
from tests.conftest import Keys

BOUNDARY = datetime(2026, 10, 1, tzinfo=UTC)  # histories straddle Sep/Oct
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def plain(value: Decimal) -> str:
    return "0" if value == 0 else format(value.normalize(), "f")


def seconds(vcpu_ms: int) -> str:
    return plain(Decimal(vcpu_ms) / 1000)


def gib(mib_ms: int) -> str:
    return plain(Decimal(mib_ms) / 1024 / 1000)


def at(ms: int) -> str:
    moment = BOUNDARY + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class History:
    execution_id: str
    start_ms: int
    vcpu: int
    memory: int
    updates: list[tuple[int, int | None, int | None]]  # (offset from start, vcpu, memory)
    pause_ms: int | None
    kill_ms: int | None
    samples: list[int] = field(default_factory=list)  # offsets from start


HOUR = 3_600_000


@st.composite
def histories(draw: st.DrawFn) -> History:
    start = draw(st.integers(-30 * HOUR, 30 * HOUR))
    length = draw(st.integers(1, 40 * HOUR))
    offsets = draw(st.lists(st.integers(1, length - 1 if length > 1 else 1), max_size=4, unique=True))
    updates = []
    for offset in sorted(offsets):
        vcpu = draw(st.one_of(st.none(), st.integers(1, 8)))
        memory = draw(st.one_of(st.none(), st.integers(128, 8192)))
        if vcpu is None and memory is None:
            vcpu = 2
        updates.append((offset, vcpu, memory))
    end = draw(st.sampled_from(["killed", "paused", "both", "none"]))
    pause = start + length if end in ("paused", "both") else None
    kill = start + length + (draw(st.integers(0, HOUR)) if end == "both" else 0) if end in ("killed", "both") else None
    samples = draw(st.lists(st.integers(0, length + (HOUR if end == "none" else 0)), max_size=5))
    return History(
        execution_id=f"exe_{uuid.uuid4().hex[:10]}", start_ms=start,
        vcpu=draw(st.integers(1, 8)), memory=draw(st.integers(128, 8192)), updates=updates,
        pause_ms=pause, kill_ms=kill, samples=samples,
    )


def events_of(h: History, team: str, source: str) -> list[dict]:
    def ev(kind: str, ms: int, **data: object) -> dict:
        etype = "sandbox.host_stats" if kind == "host_stats" else f"sandbox.lifecycle.{kind}"
        return {"specversion": "1.0", "id": f"{h.execution_id}-{kind}-{ms}", "source": source,
                "type": etype, "subject": "sbx_" + h.execution_id, "time": at(ms),
                "data": {"team_id": team, "execution_id": h.execution_id, **data}}

    out = [ev("created", h.start_ms, vcpu=h.vcpu, memory_mib=h.memory)]
    for offset, vcpu, memory in h.updates:
        data = {k: v for k, v in (("vcpu", vcpu), ("memory_mib", memory)) if v is not None}
        out.append(ev("updated", h.start_ms + offset, **data))
    if h.pause_ms is not None:
        out.append(ev("paused", h.pause_ms))
    if h.kill_ms is not None:
        out.append(ev("killed", h.kill_ms, reason="request"))
    for offset in h.samples:
        out.append(ev("host_stats", h.start_ms + offset, cpu_pct=50))
    return out


def reference_usage(h: History, lo: int, hi: int) -> tuple[int, int]:
    """Direct integration, written independently of the service's code."""
    ends = [t for t in (h.pause_ms, h.kill_ms) if t is not None]
    if ends:
        end = min(ends)
    else:  # stale: ended at the newest event of any type
        times = [h.start_ms] + [h.start_ms + o for o, _, _ in h.updates] + [h.start_ms + s for s in h.samples]
        end = max(times)
    vcpu, memory = h.vcpu, h.memory
    pieces = []
    cursor = h.start_ms
    for offset, new_vcpu, new_memory in h.updates:
        t = h.start_ms + offset
        if t >= end:
            break
        pieces.append((cursor, t, vcpu, memory))
        cursor = t
        vcpu = new_vcpu if new_vcpu is not None else vcpu
        memory = new_memory if new_memory is not None else memory
    pieces.append((cursor, end, vcpu, memory))
    v = m = 0
    for a, b, cpu, mem in pieces:
        a, b = max(a, lo), min(b, hi)
        if b > a:
            v += cpu * (b - a)
            m += mem * (b - a)
    return v, m


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    runs=st.lists(histories(), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    batches=st.integers(1, 6),
    fold_after=st.integers(0, 6),
    settle_after=st.integers(0, 7),
)
def test_usage_api_equals_direct_integration(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
    runs: list[History], seed: int, batches: int, fold_after: int, settle_after: int,
) -> None:
    rng = random.Random(seed)
    team = f"team_{uuid.uuid4().hex[:10]}"
    source = f"orchestrator/{uuid.uuid4().hex[:6]}"
    events = [e for h in runs for e in events_of(h, team, source)]
    # Duplicates, shuffled, in random cuts; folds of the samples in between.
    delivery = events + rng.sample(events, k=rng.randint(0, len(events)))
    rng.shuffle(delivery)
    cuts = sorted(rng.sample(range(1, len(delivery)), k=min(batches - 1, len(delivery) - 1))) if len(delivery) > 1 else []
    pieces = [delivery[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivery)], strict=True)]
    for number, piece in enumerate(pieces):
        response = client.post("/v1/events", content=orjson.dumps(piece),
                               headers=Keys.auth(api_keys.ingest))
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == 0
        if number == fold_after:
            jobs.fold_samples(sessions)
        if number == settle_after:  # settled usage moves to the hourly rollups
            execution_jobs.settle_stale(sessions, stale_after_s=60)
    jobs.refresh_liveness(sessions)

    lo_ms, hi_ms = -40 * HOUR - rng.randint(0, HOUR), 80 * HOUR + rng.randint(0, 2 * HOUR)
    response = client.get(f"/v1/teams/{team}/usage", params={
        "start": at(lo_ms), "end": at(hi_ms), "granularity": "month"},
        headers=Keys.auth(api_keys.finance))
    assert response.status_code == 200, response.text
    body = response.json()
    september = [reference_usage(h, lo_ms, 0) for h in runs]
    october = [reference_usage(h, 0, hi_ms) for h in runs]
    whole = [reference_usage(h, lo_ms, hi_ms) for h in runs]
    expected_sep = (sum(v for v, _ in september), sum(m for _, m in september))
    expected_oct = (sum(v for v, _ in october), sum(m for _, m in october))
    expected_all = (sum(v for v, _ in whole), sum(m for _, m in whole))
    assert [p["start"][:7] for p in body["series"]] == ["2026-09", "2026-10"]
    got = [(p["vcpu_seconds"], p["gib_seconds"]) for p in body["series"]]
    assert got == [(seconds(expected_sep[0]), gib(expected_sep[1])),
                   (seconds(expected_oct[0]), gib(expected_oct[1]))]
    # The months add up to the whole, exactly.
    assert expected_sep[0] + expected_oct[0] == expected_all[0]
    assert body["totals"]["vcpu_seconds"] == seconds(expected_all[0])
    assert body["totals"]["gib_seconds"] == gib(expected_all[1])
