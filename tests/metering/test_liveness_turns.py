"""One liveness pass per beat: the scheduler's own pass and the settle's take turns, and the
scheduler's never runs beside the settle's (both would read every running execution)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from sqlalchemy.orm import Session, sessionmaker

from billing import worker
from metering.config import Settings
from metering.executions import jobs as execution_jobs
from metering.ingest import jobs as ingest_jobs


def test_the_liveness_job_and_the_settle_take_turns_a_beat_apart(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[float, str]] = []  # float-ok: monotonic seconds
    monkeypatch.setattr(ingest_jobs, "refresh_liveness_paced",
                        lambda *_: calls.append((time.monotonic(), "liveness")))
    monkeypatch.setattr(execution_jobs, "settle_stale",
                        lambda *_: calls.append((time.monotonic(), "settle")))
    monkeypatch.setattr(worker, "SCHEDULES", (ingest_jobs.schedule, execution_jobs.schedule))
    beat = 0.5
    scheduler = worker.start_scheduler(
        sessions, settings.model_copy(update={"fold_interval_s": beat}))
    try:
        time.sleep(beat * 8.5)
    finally:
        scheduler.shutdown(wait=True)
    runs = sorted(c for c in calls if c[1] in ("liveness", "settle"))
    turns = [name for _, name in runs]
    assert len(turns) >= 6
    assert turns[0] == "settle"  # first, at the end of its first interval
    assert all(a != b for a, b in itertools.pairwise(turns)), turns
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(runs)]
    assert min(gaps) > beat / 4, gaps  # a beat apart, never two at once


def test_the_scheduled_pass_is_skipped_while_the_settles_pass_runs(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered, leave = threading.Event(), threading.Event()
    passes: list[str] = []

    def slow_pass(*_: object) -> int:
        passes.append(threading.current_thread().name)
        entered.set()
        assert leave.wait(10)
        time.sleep(0.3)  # a pass of 0.3 s: the pacer then holds the next back for 0.9 s
        return 0

    monkeypatch.setattr(ingest_jobs, "refresh_liveness", slow_pass)
    monkeypatch.setattr(ingest_jobs, "_liveness_pacer", ingest_jobs.Pacer(duty=0.25))
    settle = threading.Thread(target=ingest_jobs.refresh_liveness_now, args=(sessions, 60),
                              name="settle")
    settle.start()
    try:
        assert entered.wait(10)
        assert ingest_jobs.refresh_liveness_paced(sessions, 60) is None
    finally:
        leave.set()
        settle.join(10)
    # The settle's pass counts for the pacer, as the scheduler's own would.
    assert ingest_jobs.refresh_liveness_paced(sessions, 60) is None
    assert passes == ["settle"]
