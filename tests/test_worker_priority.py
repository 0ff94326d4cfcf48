"""The worker serves the orchestrator first: when the machine is saturated, background jobs
(folds, liveness, settles, closes, Stripe) slow down before kill orders do."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from sqlalchemy.orm import Session, sessionmaker

from billing import worker
from metering.config import Settings
from metering.scheduling import JobEntry

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread CPU priority is Linux's")


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_background_jobs_run_at_a_lower_cpu_priority_than_the_orchestrators(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, set[int]] = {"fold": set(), "sweep": set()}
    done = threading.Event()

    def record(name: str) -> None:
        seen[name].add(_thread_nice())
        if all(seen.values()):
            done.set()

    def schedule(_: sessionmaker[Session], __: Settings) -> list[JobEntry]:
        return [JobEntry("fold", 0.05, lambda: record("fold")),
                JobEntry("sweep", 0.05, lambda: record("sweep"), orchestrator=True)]

    monkeypatch.setattr(worker, "SCHEDULES", (schedule,))
    own = os.getpriority(os.PRIO_PROCESS, 0)
    scheduler = worker.start_scheduler(sessions, settings.model_copy(update={"jobs_nice": 7}))
    try:
        assert done.wait(10)
        time.sleep(0.5)  # many runs each, on whichever threads of their pools
    finally:
        scheduler.shutdown(wait=True)
    assert seen["fold"] == {max(own, 7)}
    assert seen["sweep"] == {own}


def test_only_kill_orders_and_their_delivery_are_on_the_orchestrators_path(
    sessions: sessionmaker[Session], settings: Settings,
) -> None:
    urgent = {e.name for e in worker.job_table(sessions, settings) if e.orchestrator}
    assert urgent == {"enforce_limits", "deliver_webhooks"}
