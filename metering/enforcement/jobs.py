"""Enforcement's background work (the sweep and the webhook delivery), as plain functions
the scheduler (or a test) calls.

Both are safe on any number of workers at once: the sweep runs on one worker at a time (a
transaction-level advisory lock, tried, not waited for) and its kill orders and messages are
unique by execution and by key; delivery claims messages with SKIP LOCKED and a lease.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from metering import observability
from metering.config import Settings
from metering.core.clock import utc_now
from metering.db import transaction
from metering.enforcement import delivery, service
from metering.enforcement.watch import Watchlist
from metering.scheduling import JobEntry


def sweep_enforcement(
    sessions: sessionmaker[Session], stale_after_s: int, watch: Watchlist | None = None,
) -> service.SweepResult:
    """Issue the kill orders and threshold notifications due now (run every second)."""
    watch = service.WATCH if watch is None else watch
    looked: list[str] = []
    try:
        with transaction(sessions) as session:
            result = service.sweep(session, utc_now(), timedelta(seconds=stale_after_s), watch,
                                   on_look=looked.append)
        observability.observe_kill_orders(o.reason for o in result.kill_orders)
        return result
    except BaseException:
        # The notifications those looks queued were rolled back: look at those teams again
        # at the next sweep rather than when their plan said.
        watch.forget(looked)
        raise


def deliver_webhooks(
    sessions: sessionmaker[Session], settings: Settings,
    policy: delivery.DeliveryPolicy | None = None, client: httpx.Client | None = None,
) -> delivery.DeliveryResult:
    """Post due outbox messages to the orchestrator's webhook (run every second)."""
    policy = policy or delivery.DeliveryPolicy(max_age_s=settings.webhook_max_age_s)
    return delivery.deliver_due(sessions, settings.orchestrator_webhook_url,
                                settings.orchestrator_webhook_secret, policy, client)


def schedule(sessions: sessionmaker[Session], settings: Settings) -> list[JobEntry]:
    return [
        JobEntry("enforce_limits", settings.sweep_interval_s,
                 lambda: sweep_enforcement(sessions, settings.stale_after_s), orchestrator=True),
        JobEntry("deliver_webhooks", settings.sweep_interval_s,
                 lambda: deliver_webhooks(sessions, settings), orchestrator=True),
    ]
