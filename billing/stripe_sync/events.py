"""Stripe's events, stored first and handled once, in any order (the webhook endpoint and the
`stripe_events` job both hand them here).

Once. The event is inserted into `stripe_events` by its id and committed before anything else;
a redelivery finds the row and answers 200 with `"duplicate": true`, doing nothing. Handling
runs right after (and, if it failed, again from the `stripe_events` job with backoff); the event
row is locked SKIP LOCKED while handled and `handled_at` set in the same transaction as the
invoice change, so it takes effect exactly once.

Any order. Events are not trusted for state: the handler re-fetches the Stripe invoice and
moves our copy to what Stripe says now. Stripe's `paid` and `void` are final, so an
`invoice.payment_failed` handled after `invoice.paid` finds the invoice paid and changes
nothing. Mapping, per Stripe invoice (a "part" of ours, see `planning`):

* Stripe `paid` -> part paid; our invoice `paid` once every part is (`invoice.paid` to the
  orchestrator; a dunning block is lifted unless another invoice is still overdue).
* `invoice.payment_failed` while Stripe still has it open -> `payment_failed`, the dunning
  window starts at the event's time (`payment_failed_at`, kept from the first failure).
* `invoice.marked_uncollectible` (Stripe `uncollectible`) -> `payment_failed` too: our states
  have no "uncollectible", Stripe's word is kept in `stripe_status`, and dunning applies.
* Stripe `void` -> `void` once every part is (the debt is cancelled; the block is lifted).

Events of other types, and invoices that are not ours (no `invoice_id` metadata of ours), are
recorded as `ignored`. An event for one of our invoices whose Stripe id is not stored yet (the
sync is between Stripe's answer and its commit) waits and is retried.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from billing.stripe_sync import planning
from billing.stripe_sync import repository as repo
from billing.stripe_sync.gateway import (
    RemoteInvoice,
    StripeFailure,
    StripeGateway,
    StripeNotConfigured,
)
from billing.stripe_sync.service import apply_outcome, part_states
from metering.core.clock import utc_now
from metering.db import transaction

log = logging.getLogger(__name__)

HANDLED_TYPES = frozenset({"invoice.paid", "invoice.payment_failed", "invoice.voided",
                           "invoice.marked_uncollectible"})
FAILURE_TYPES = frozenset({"invoice.payment_failed", "invoice.marked_uncollectible"})
EVENT_BACKOFF = planning.Backoff(base=timedelta(seconds=10), cap=timedelta(hours=1),
                                 max_attempts=1_000_000)


class _NotYet(Exception):
    """The event is about one of our invoices whose Stripe id is not stored yet."""


# ---- handling ------------------------------------------------------------------------------


def receive_event(sessions: sessionmaker[Session], event: dict[str, Any],
                  now: datetime | None = None) -> bool:
    """Store a verified event in the inbox; False if it was received before."""
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    object_id = obj.get("id") if isinstance(obj, dict) else None
    with transaction(sessions) as session:
        return repo.insert_event(session, event_id=event["id"], type=event["type"],
                                 object_id=object_id if isinstance(object_id, str) else None,
                                 payload=event, now=now or utc_now())


def _event_time(payload: dict[str, Any], fallback: datetime) -> datetime:
    created = payload.get("created")
    if isinstance(created, int) and not isinstance(created, bool):
        return datetime.fromtimestamp(created, UTC)
    return fallback


def _our_invoice_id(payload: dict[str, Any]) -> str | None:
    obj = (payload.get("data") or {}).get("object") or {}
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    value = metadata.get("invoice_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None


def handle_event(sessions: sessionmaker[Session], gateway: StripeGateway | None,
                 event_id: str, *, dunning_days: int, now: datetime | None = None) -> str:
    """Handle one stored event if nobody has; answers what happened: applied (our invoice
    changed), unchanged, recorded (on the Stripe invoice only: ours is still being synced),
    ignored, done (handled before), busy (being handled elsewhere) or pending (retried later
    by the `stripe_events` job)."""
    moment = now or utc_now()
    with transaction(sessions) as session:
        event = repo.get_event(session, event_id)
        if event is None or event.handled_at is not None:
            return "done"
        event_type, stripe_id, payload = event.type, event.object_id, dict(event.payload)
        attempts = event.attempts
        part = repo.part_by_stripe_id(session, stripe_id) \
            if stripe_id and event_type in HANDLED_TYPES else None
        ours = part is not None or (
            (invoice_id := _our_invoice_id(payload)) is not None
            and repo.invoice_exists(session, invoice_id))
    if event_type not in HANDLED_TYPES or not ours or stripe_id is None:
        return _mark(sessions, event_id, "ignored", moment)
    try:
        if part is None:
            raise _NotYet(f"Stripe invoice {stripe_id} is not recorded yet")
        if gateway is None:
            raise StripeNotConfigured("METERING_STRIPE_API_KEY is not set; cannot re-fetch")
        remote = gateway.retrieve_invoice(stripe_id)
    except (_NotYet, StripeFailure, StripeNotConfigured) as exc:
        message = exc.message if isinstance(exc, StripeFailure) else str(exc)
        next_at = EVENT_BACKOFF.next_attempt(moment, attempts + 1) or moment
        with transaction(sessions) as session:
            repo.record_event_failure(session, event_id, message, next_at)
        return "pending"
    with transaction(sessions) as session:
        if repo.lock_unhandled_event(session, event_id) is None:
            return "busy"
        outcome = _apply(session, part.invoice_id, part.part, event_type, remote,
                         _event_time(payload, moment), moment, dunning_days)
        _set_handled(session, event_id, outcome, moment)
    return outcome


def _apply(session: Session, invoice_id: str, part_index: int, event_type: str,
           remote: RemoteInvoice, event_time: datetime, now: datetime,
           dunning_days: int) -> str:
    invoice = repo.get_invoice(session, invoice_id, lock=True)
    if invoice is None:
        return "ignored"
    failed_at = None
    if remote.status == "uncollectible":
        failed_at = remote.marked_uncollectible_at or event_time
    elif remote.status == "open" and event_type in FAILURE_TYPES:
        failed_at = event_time
    repo.update_part(
        session, invoice_id, part_index, status=remote.status, now=now,
        paid_at=(remote.paid_at or event_time) if remote.status == "paid" else None,
        payment_failed_at=failed_at,
        voided_at=(remote.voided_at or event_time) if remote.status == "void" else None)
    session.flush()
    if invoice.status not in repo.SETTLED_BY_STRIPE:
        # Still syncing: the sync's last step derives the state from the parts, this one
        # included.
        return "recorded"
    parts = repo.parts_of(session, invoice_id)
    outcome = planning.invoice_outcome(part_states(parts))
    changed = apply_outcome(session, invoice, outcome, now, dunning_days)
    return "applied" if changed else "unchanged"


def _set_handled(session: Session, event_id: str, outcome: str, now: datetime) -> None:
    event = repo.get_event(session, event_id)
    assert event is not None
    event.handled_at = now
    event.outcome = outcome
    event.last_error = None


def _mark(sessions: sessionmaker[Session], event_id: str, outcome: str, now: datetime) -> str:
    with transaction(sessions) as session:
        if repo.lock_unhandled_event(session, event_id) is None:
            return "busy"
        _set_handled(session, event_id, outcome, now)
    return outcome


def handle_pending(sessions: sessionmaker[Session], gateway: StripeGateway | None, *,
                   dunning_days: int, now: datetime | None = None,
                   limit: int = 500) -> dict[str, int]:
    """Retry events whose handling failed or never ran (the `stripe_events` job)."""
    moment = now or utc_now()
    with transaction(sessions) as session:
        ids = repo.pending_event_ids(session, moment, limit)
    counts: dict[str, int] = {}
    for event_id in ids:
        outcome = handle_event(sessions, gateway, event_id, dunning_days=dunning_days,
                               now=moment)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
