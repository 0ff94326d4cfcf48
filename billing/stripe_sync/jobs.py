"""The Stripe work of the worker, as plain functions the scheduler (or a test) calls.

All are safe on any number of workers at once: invoices are claimed SKIP LOCKED with a lease,
events are locked SKIP LOCKED while handled, and blocking a team is idempotent.

`schedule()` gives the worker's entries: the sync and the event retry only when an API key is
configured, dunning always (it needs no Stripe call).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from billing.stripe_sync import repository as repo
from billing.stripe_sync.events import handle_pending
from billing.stripe_sync.gateway import StripeGateway
from billing.stripe_sync.service import BLOCK_REASON, InvoiceSync, SyncPolicy, SyncReport
from metering.config import Settings
from metering.core.clock import utc_now
from metering.db import transaction
from metering.scheduling import JobEntry
from metering.teams.service import block_team

log = logging.getLogger(__name__)

EVENTS_INTERVAL_S = 30.0
DUNNING_INTERVAL_S = 60.0


def sync_invoices(sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings,
                  *, now: datetime | None = None, policy: SyncPolicy | None = None,
                  workers: int = 4) -> SyncReport:
    """Sync every due invoice to Stripe."""
    report = InvoiceSync(sessions, gateway, dunning_days=settings.dunning_days,
                         policy=policy).sync_due(now=now, workers=workers)
    if report.synced or report.failed:
        log.info("stripe sync", extra={"synced": len(report.synced),
                                       "skipped": len(report.skipped),
                                       "failed": len(report.failed)})
    return report


def retry_stripe_events(sessions: sessionmaker[Session], gateway: StripeGateway | None,
                        settings: Settings, *, now: datetime | None = None) -> dict[str, int]:
    """Handle webhook events whose handling failed or never ran."""
    return handle_pending(sessions, gateway, dunning_days=settings.dunning_days, now=now)


def enforce_dunning(sessions: sessionmaker[Session], dunning_days: int, *,
                    now: datetime | None = None) -> list[str]:
    """Block every team with an invoice still `payment_failed` `dunning_days` after the
    failure (reason `unpaid_invoice`); answers the teams newly blocked. A later payment
    unblocks (see `service.apply_outcome`)."""
    moment = now or utc_now()
    cutoff = moment - timedelta(days=dunning_days)
    blocked: list[str] = []
    with transaction(sessions) as session:
        for team_id in repo.overdue_team_ids(session, cutoff):
            if block_team(session, team_id, BLOCK_REASON, moment):
                blocked.append(team_id)
    if blocked:
        log.info("teams blocked for unpaid invoices", extra={"teams": blocked})
    return blocked


def schedule(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    entries = [
        JobEntry("stripe_dunning", DUNNING_INTERVAL_S,
                 lambda: enforce_dunning(sessions, settings.dunning_days)),
    ]
    if settings.stripe_api_key:
        gateway = StripeGateway.from_settings(settings)
        entries += [
            JobEntry("stripe_sync", settings.stripe_sync_interval_s,
                     lambda: sync_invoices(sessions, gateway, settings)),
            JobEntry("stripe_events", EVENTS_INTERVAL_S,
                     lambda: retry_stripe_events(sessions, gateway, settings)),
        ]
    return entries
