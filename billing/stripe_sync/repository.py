"""Every query of the Stripe sync: customers, invoice parts, the invoices it claims and
updates, the webhook inbox, and the dunning scan. Never commits (the caller's unit of work
does)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from billing.invoices.models import Invoice
from billing.stripe_sync.models import StripeCustomer, StripeEvent, StripeInvoice
from metering.teams.models import Team

# Statuses after the sync: webhooks may move an invoice between these.
SETTLED_BY_STRIPE = ("synced", "paid", "payment_failed", "void")

# ---- customers -------------------------------------------------------------------------


def customer_id(session: Session, team_id: str) -> str | None:
    return session.execute(select(StripeCustomer.stripe_customer_id)
                           .where(StripeCustomer.team_id == team_id)).scalar_one_or_none()


def save_customer(session: Session, team_id: str, stripe_customer_id: str) -> str:
    """Remember a team's customer; the first one stored wins (answered)."""
    session.execute(insert(StripeCustomer)
                    .values(team_id=team_id, stripe_customer_id=stripe_customer_id)
                    .on_conflict_do_nothing(index_elements=["team_id"]))
    stored = customer_id(session, team_id)
    assert stored is not None
    return stored


# ---- invoices to sync --------------------------------------------------------------------

_CLAIM_DUE = text("""
WITH due AS (
    SELECT id FROM invoices
    WHERE (status = 'finalized' AND (next_sync_at IS NULL OR next_sync_at <= :now))
       OR (status = 'sync_failed' AND next_sync_at <= :now)
    ORDER BY finalized_at NULLS FIRST, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE invoices AS i SET next_sync_at = :lease_until, sync_attempts = i.sync_attempts + 1
FROM due WHERE i.id = due.id
RETURNING i.id, i.sync_attempts
""")

_CLAIM_ONE = text("""
UPDATE invoices SET next_sync_at = :lease_until, sync_attempts = sync_attempts + 1
WHERE id = (SELECT id FROM invoices WHERE id = :id AND status IN ('finalized', 'sync_failed')
            FOR UPDATE SKIP LOCKED)
RETURNING id, sync_attempts
""")


def claim_due(session: Session, now: datetime, lease_until: datetime,
              limit: int) -> list[tuple[str, int]]:
    """Take due invoices for one worker: their `next_sync_at` becomes a lease (another worker
    skips them until it passes) and the attempt is counted before any call to Stripe, so a
    crash mid-sync is known to the next attempt. Answers (invoice id, attempt number)."""
    rows = session.execute(_CLAIM_DUE, {"now": now, "lease_until": lease_until,
                                        "limit": limit})
    return sorted((str(r[0]), int(r[1])) for r in rows)


def claim_one(session: Session, invoice_id: str,
              lease_until: datetime) -> tuple[str, int] | None:
    """Take one invoice whatever its schedule (the CLI's explicit retry)."""
    row = session.execute(_CLAIM_ONE, {"id": invoice_id, "lease_until": lease_until}).first()
    return None if row is None else (str(row[0]), int(row[1]))


def get_invoice(session: Session, invoice_id: str, *, lock: bool = False) -> Invoice | None:
    query = select(Invoice).where(Invoice.id == invoice_id)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def get_team(session: Session, team_id: str) -> Team | None:
    return session.get(Team, team_id)


def record_sync_failure(session: Session, invoice_id: str, error: str,
                        next_sync_at: datetime | None) -> None:
    session.execute(update(Invoice)
                    .where(Invoice.id == invoice_id,
                           Invoice.status.in_(("finalized", "sync_failed")))
                    .values(status="sync_failed", sync_error=error[:2000],
                            next_sync_at=next_sync_at))


def invoice_ids_with_status(session: Session, status: str) -> list[str]:
    return [str(r) for r in session.execute(
        select(Invoice.id).where(Invoice.status == status).order_by(Invoice.id)).scalars()]


# ---- parts (Stripe invoices) -------------------------------------------------------------


def parts_of(session: Session, invoice_id: str) -> Sequence[StripeInvoice]:
    # populate_existing: parts may have been updated by SQL earlier in this transaction.
    return session.execute(select(StripeInvoice).where(StripeInvoice.invoice_id == invoice_id)
                           .order_by(StripeInvoice.part)
                           .execution_options(populate_existing=True)).scalars().all()


def part_by_stripe_id(session: Session, stripe_invoice_id: str) -> StripeInvoice | None:
    return session.execute(select(StripeInvoice).where(
        StripeInvoice.stripe_invoice_id == stripe_invoice_id)).scalar_one_or_none()


def insert_part(session: Session, values: dict[str, Any]) -> StripeInvoice:
    """Record a Stripe invoice the moment its id is known; answers the stored row (an
    earlier writer's, if any)."""
    session.execute(insert(StripeInvoice).values(**values)
                    .on_conflict_do_nothing(index_elements=["invoice_id", "part"]))
    if values["part"] == 0:
        session.execute(update(Invoice).where(Invoice.id == values["invoice_id"],
                                              Invoice.stripe_invoice_id.is_(None))
                        .values(stripe_invoice_id=values["stripe_invoice_id"]))
    row = session.execute(select(StripeInvoice).where(
        StripeInvoice.invoice_id == values["invoice_id"],
        StripeInvoice.part == values["part"])).scalar_one()
    return row


_UPDATE_PART_STATUS = text("""
UPDATE stripe_invoices SET
    -- Paid and void are final in Stripe: a late writer holding an older view never undoes them.
    stripe_status = CASE WHEN stripe_status IN ('paid', 'void') THEN stripe_status
                         ELSE :status END,
    finalized_at = COALESCE(finalized_at, :finalized_at),
    collected_at = COALESCE(collected_at, :collected_at),
    paid_at = COALESCE(paid_at, :paid_at),
    payment_failed_at = COALESCE(payment_failed_at, :payment_failed_at),
    voided_at = COALESCE(voided_at, :voided_at),
    updated_at = :now
WHERE invoice_id = :invoice_id AND part = :part
""")


def update_part(session: Session, invoice_id: str, part: int, *, status: str, now: datetime,
                finalized_at: datetime | None = None, collected_at: datetime | None = None,
                paid_at: datetime | None = None, payment_failed_at: datetime | None = None,
                voided_at: datetime | None = None) -> None:
    """Move a part forward; timestamps are set once (the first time wins)."""
    session.execute(_UPDATE_PART_STATUS, {
        "invoice_id": invoice_id, "part": part, "status": status, "now": now,
        "finalized_at": finalized_at, "collected_at": collected_at, "paid_at": paid_at,
        "payment_failed_at": payment_failed_at, "voided_at": voided_at})


# ---- webhook inbox -----------------------------------------------------------------------


def insert_event(session: Session, *, event_id: str, type: str, object_id: str | None,
                 payload: dict[str, Any], now: datetime) -> bool:
    """Store an event by its id; False if it was stored before (a redelivery)."""
    row = session.execute(insert(StripeEvent).values(
        id=event_id, type=type, object_id=object_id, payload=payload, received_at=now,
        next_attempt_at=now).on_conflict_do_nothing(index_elements=["id"])
        .returning(StripeEvent.id)).first()
    return row is not None


def get_event(session: Session, event_id: str) -> StripeEvent | None:
    return session.get(StripeEvent, event_id)


def lock_unhandled_event(session: Session, event_id: str) -> StripeEvent | None:
    """The event, locked, if nobody handled it and nobody is handling it right now."""
    return session.execute(select(StripeEvent).where(
        StripeEvent.id == event_id, StripeEvent.handled_at.is_(None))
        .with_for_update(skip_locked=True)).scalar_one_or_none()


def pending_event_ids(session: Session, now: datetime, limit: int) -> list[str]:
    return [str(r) for r in session.execute(
        select(StripeEvent.id).where(StripeEvent.handled_at.is_(None),
                                     StripeEvent.next_attempt_at <= now)
        .order_by(StripeEvent.next_attempt_at, StripeEvent.id).limit(limit)).scalars()]


def record_event_failure(session: Session, event_id: str, error: str,
                         next_attempt_at: datetime) -> None:
    session.execute(update(StripeEvent)
                    .where(StripeEvent.id == event_id, StripeEvent.handled_at.is_(None))
                    .values(attempts=StripeEvent.attempts + 1, last_error=error[:2000],
                            next_attempt_at=next_attempt_at))


def invoice_exists(session: Session, invoice_id: str) -> bool:
    return session.execute(select(Invoice.id).where(Invoice.id == invoice_id)).first() \
        is not None


# ---- dunning -----------------------------------------------------------------------------


def overdue_team_ids(session: Session, failed_before: datetime) -> list[str]:
    """Teams with an invoice still unpaid after a payment failure at or before the cutoff."""
    return [str(r) for r in session.execute(
        select(Invoice.team_id).where(Invoice.status == "payment_failed",
                                      Invoice.payment_failed_at <= failed_before)
        .distinct().order_by(Invoice.team_id)).scalars()]


def team_has_overdue(session: Session, team_id: str, failed_before: datetime) -> bool:
    return bool(session.execute(select(func.count()).select_from(Invoice).where(
        Invoice.team_id == team_id, Invoice.status == "payment_failed",
        Invoice.payment_failed_at <= failed_before)).scalar_one())
