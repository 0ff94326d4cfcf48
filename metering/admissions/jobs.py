"""Admissions' background work: forgetting long-expired leases."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from metering.admissions import repository as admissions_repo
from metering.config import Settings
from metering.core.clock import utc_now
from metering.db import transaction
from metering.scheduling import JobEntry


def purge_leases(sessions: sessionmaker[Session]) -> int:
    """Forget leases that expired more than a day ago (they no longer hold anything)."""
    with transaction(sessions) as session:
        return admissions_repo.purge(session, utc_now() - timedelta(days=1))


def schedule(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    return [JobEntry("purge_leases", 3600.0, lambda: purge_leases(sessions))]
