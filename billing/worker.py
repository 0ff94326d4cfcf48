"""The worker: APScheduler running every feature's periodic jobs, in-process with `serve` or
alone.

Each feature declares its jobs and their intervals in its own `jobs.py`; the worker only
collects them. Every job is safe with several workers running at once (each takes database
locks), so the worker scales out without coordination.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
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

Schedule = Callable[[sessionmaker[Session], Settings], list[JobEntry]]

SCHEDULES: tuple[Schedule, ...] = (
    ingest_jobs.schedule, execution_jobs.schedule, admission_jobs.schedule,
    enforcement_jobs.schedule, retention_jobs.schedule, invoice_jobs.schedule,
    stripe_jobs.schedule)


def _guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    unreachable = False  # this job's last run found the database down

    def run() -> None:
        nonlocal unreachable
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
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    scheduler.add_listener(_count_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    for name, interval, job in job_table(sessions, settings):
        scheduler.add_job(_guarded(name, job), "interval", seconds=interval, id=name, name=name)
    scheduler.start()
    return scheduler
