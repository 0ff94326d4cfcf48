"""Retention's background work: the hourly drop of sample months closed and invoiced."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from billing.retention.service import run_retention
from metering.config import Settings
from metering.scheduling import JobEntry


def schedule(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    return [JobEntry("sample_retention", 3600.0, lambda: run_retention(sessions, settings))]
