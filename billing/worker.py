"""The worker: APScheduler running every feature's periodic jobs, in-process with `serve` or
alone.

Each feature declares its jobs and their intervals in its own `jobs.py`; the worker only
collects them. Every job is safe with several workers running at once (each takes database
locks), so the worker scales out without coordination.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from billing.invoices import jobs as invoice_jobs
from billing.retention import jobs as retention_jobs
from billing.stripe_sync import jobs as stripe_jobs
from metering import observability
from metering.admissions import jobs as admission_jobs
from metering.config import Settings
from metering.enforcement import jobs as enforcement_jobs
from metering.executions import jobs as execution_jobs
from metering.ingest import jobs as ingest_jobs
from metering.scheduling import JobEntry

log = logging.getLogger(__name__)

ORCHESTRATOR_POOL = "orchestrator"

Schedule = Callable[[sessionmaker[Session], Settings], list[JobEntry]]

SCHEDULES: tuple[Schedule, ...] = (
    ingest_jobs.schedule, execution_jobs.schedule, admission_jobs.schedule,
    enforcement_jobs.schedule, retention_jobs.schedule, invoice_jobs.schedule,
    stripe_jobs.schedule)


_thread_nice = threading.local()


def _set_thread_nice(nice: int) -> None:
    """Lower the calling thread's CPU priority to this nice value (only this thread: Linux
    schedules threads one by one), once per thread; where that is not possible the job simply
    runs at the process's priority. Only the background pool's threads are lowered: the
    orchestrator's jobs have a pool of their own, so none of them runs on a lowered thread."""
    if nice <= 0 or getattr(_thread_nice, "set", False):
        return
    _thread_nice.set = True
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        thread = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, thread) < nice:  # lower only, never raise
            os.setpriority(os.PRIO_PROCESS, thread, nice)


def _guarded(name: str, job: Callable[[], object], nice: int = 0) -> Callable[[], None]:
    unreachable = False  # this job's last run found the database down

    def run() -> None:
        nonlocal unreachable
        _set_thread_nice(nice)
        started = time.perf_counter()
        failed = False
        try:
            job()
            if unreachable:
                log.info("job running again: the database answers", extra={"job": name})
            unreachable = False
        except OperationalError as exc:
            # The database is down or restarting: one line per job when it happens (not a
            # traceback every second); the job retries on its schedule.
            failed = True
            if not unreachable:
                log.warning("job cannot reach the database; retrying", extra={
                    "job": name, "error": str(exc.orig or exc).splitlines()[0]})
            unreachable = True
        except Exception:
            failed = True
            log.exception("job failed", extra={"job": name})
        finally:
            seconds = time.perf_counter() - started
            observability.observe_job(name, seconds, failed)
            log.debug("job done", extra={"job": name, "seconds": seconds})

    return run


def job_table(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    """Every feature's periodic jobs."""
    return [entry for schedule in SCHEDULES for entry in schedule(sessions, settings)]


def _count_skipped(event: JobEvent) -> None:
    # A skipped run is a job falling behind its cadence (the enforcement sweep's kill orders
    # then come late): counted, so it shows on a dashboard rather than only in a log line.
    why = "running" if event.code == EVENT_JOB_MAX_INSTANCES else "missed"
    observability.observe_job_skipped(event.job_id, why)


def start_scheduler(sessions: sessionmaker[Session], settings: Settings) -> BackgroundScheduler:
    # Two pools: the orchestrator's jobs (kill orders, their delivery) at the process's CPU
    # priority, every other job on threads lowered to `jobs_nice`.
    scheduler = BackgroundScheduler(timezone="UTC", executors={
        "default": ThreadPoolExecutor(10), ORCHESTRATOR_POOL: ThreadPoolExecutor(4),
    }, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    scheduler.add_listener(_count_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    # Wall time, as the scheduler keeps it: its intervals are real seconds whatever clock
    # `utc_now()` keeps (a simulation runs the product's clock faster).
    started = datetime.now(UTC)
    for name, interval, job, orchestrator, offset in job_table(sessions, settings):
        nice = 0 if orchestrator else settings.jobs_nice
        scheduler.add_job(_guarded(name, job, nice), "interval", seconds=interval, id=name,
                          name=name, executor=ORCHESTRATOR_POOL if orchestrator else "default",
                          start_date=started + timedelta(seconds=interval + offset))
    scheduler.start()
    return scheduler
