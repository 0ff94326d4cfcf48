"""Invoices' background work: the month close, once each month's grace period has passed."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from billing.invoices.close import close_due_periods
from metering.config import Settings
from metering.scheduling import JobEntry


def schedule(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    return [JobEntry("close_due_periods", settings.close_interval_s,
                     lambda: close_due_periods(sessions, settings))]
