"""Metering's background work, as plain functions the scheduler (or a test) calls.

Each job runs in its own transaction and is safe to run on any number of workers at once:
the fold takes an exclusive advisory lock, and the liveness refresh is a monotonic upsert.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from metering.core.clock import utc_now
from metering.db import transaction
from metering.ingest import repository as ingest_repo
from metering.ingest.service import FOLD_AGE

log = logging.getLogger(__name__)

FOLD_BATCH = 200_000


def refresh_liveness(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as session:
        return ingest_repo.refresh_liveness(session)


def fold_samples(sessions: sessionmaker[Session]) -> int:
    """Fold pending samples older than three minutes into minute rows, refreshing liveness
    first so no newest-event time is lost. Never folds fresher samples: ingest relies on it."""
    watermark = utc_now().replace(second=0, microsecond=0) - FOLD_AGE
    moved_total = 0
    while True:
        with transaction(sessions) as session:
            ingest_repo.refresh_liveness(session)
            moved = ingest_repo.fold(session, watermark, FOLD_BATCH)
        moved_total += moved
        if moved < FOLD_BATCH:
            break
    if moved_total:
        log.info("folded samples", extra={"samples": moved_total})
    return moved_total
