"""The worker: APScheduler jobs for every sweep, in-process with `serve` or alone.

Every job is safe with several workers running at once (each takes database locks), so the
worker scales out without coordination.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from billing.invoices.close import close_due_periods
from billing.retention import run_retention
from billing.stripe_sync import jobs as stripe_jobs
from metering import jobs as metering_jobs
from metering import jobs_enforcement, observability
from metering.config import Settings

log = logging.getLogger(__name__)


def _guarded(name: str, job: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        started = time.perf_counter()
        failed = False
        try:
            job()
        except Exception:
            failed = True
            log.exception("job failed", extra={"job": name})
        finally:
            seconds = time.perf_counter() - started
            observability.observe_job(name, seconds, failed)
            log.debug("job done", extra={"job": name, "seconds": seconds})

    return run


def job_table(
    sessions: sessionmaker[Session], settings: Settings
) -> list[tuple[str, float, Callable[[], Any]]]:
    """(name, interval seconds, function) for every periodic job."""
    return [
        ("refresh_liveness", max(settings.fold_interval_s / 2, 1.0),
         lambda: metering_jobs.refresh_liveness_paced(sessions)),
        ("fold_samples", settings.fold_interval_s * 6,
         lambda: metering_jobs.fold_samples(sessions)),
        ("settle_stale", settings.fold_interval_s * 2,
         lambda: metering_jobs.settle_stale(sessions, settings.stale_after_s)),
        ("purge_leases", 3600.0, lambda: metering_jobs.purge_leases(sessions)),
        ("sample_partitions", 3600.0,
         lambda: metering_jobs.maintain_sample_partitions(sessions)),
        ("sample_retention", 3600.0, lambda: run_retention(sessions, settings)),
        ("enforce_limits", settings.sweep_interval_s,
         lambda: jobs_enforcement.sweep_enforcement(sessions, settings.stale_after_s)),
        ("deliver_webhooks", settings.sweep_interval_s,
         lambda: jobs_enforcement.deliver_webhooks(sessions, settings)),
        ("close_due_periods", settings.close_interval_s,
         lambda: close_due_periods(sessions, settings)),
        *stripe_jobs.job_entries(sessions, settings),
    ]


def start_scheduler(sessions: sessionmaker[Session], settings: Settings) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    for name, interval, job in job_table(sessions, settings):
        scheduler.add_job(_guarded(name, job), "interval", seconds=interval, id=name, name=name)
    scheduler.start()
    return scheduler
