"""Invoice sync to Stripe: one customer per team, one draft Stripe invoice per invoice (or per
250 lines, see `planning`), one item per line, finalized, then paid or sent.

Exactly once, by construction. Every mutating call carries an idempotency key made of our ids
(`planning`), and every Stripe customer and invoice id is stored (committed) the moment Stripe
answers. A crash or a lost response at any point is resumed by the next attempt: the same key
replays Stripe's original answer for 24 hours; beyond that the resume path looks before it
writes (it searches for the invoice by metadata when no id was stored, lists the items already
attached, and re-reads the invoice's status before finalizing or collecting), so nothing is
ever created twice. What finalize and pay/send answered is written once, with the invoice's
outcome, in one transaction (two commits per invoice besides the customer's): losing it in a
crash costs only a re-read. Only `send_invoice` can repeat an effect, and only when the send
key expired before the outcome was stored: the customer gets the email twice.

Claiming. A run claims due invoices (`finalized`, or `sync_failed` whose `next_sync_at`
passed) with SKIP LOCKED, counting the attempt and setting `next_sync_at` to a lease, so any
number of workers can run at once.

Failures. A call that fails transiently (connection error, timeout, 5xx, 429) is retried a few
times in the run, after the 429's Retry-After if it is short. Then the invoice shows
`sync_failed` with Stripe's message in `sync_error` and `next_sync_at` set by exponential backoff
(never sooner than Retry-After); after `Backoff.max_attempts` attempts, or on an error no
retry can fix (invalid request, authentication, a plan that cannot be sent), `next_sync_at` is
cleared: the invoice waits for `metering stripe sync --invoice ID` after someone looked at it.

Outcomes. Zero-total invoices are not sent: they become `synced` with `stripe_status =
'skipped_zero_total'` and no Stripe id. Otherwise, once every part is finalized and collected,
the invoice's state follows Stripe's answers: `pay` succeeding makes it `paid` at once; a card
decline (402) is not a sync failure: the invoice is synced, and marked `payment_failed` at once
(the dunning window starts) instead of waiting for the webhook, which then changes nothing;
`send_invoice` invoices stay `synced` until a webhook says paid.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Literal, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import repository as team_settings
from billing.invoices import repository as invoices_repo
from billing.invoices.models import Invoice, InvoiceLine
from billing.stripe_sync import planning
from billing.stripe_sync import repository as repo
from billing.stripe_sync.gateway import (
    CardDeclined,
    DraftInvoice,
    DraftItem,
    RemoteInvoice,
    StripeFailure,
    StripeGateway,
)
from billing.stripe_sync.models import StripeInvoice
from billing.stripe_sync.planning import Backoff, LineToSend, Outcome, PartPlan, PlanError
from metering.core.clock import rfc3339, utc_now
from metering.core.money import fmt_minor
from metering.db import transaction
from metering.enforcement.outbox import enqueue_message
from metering.teams.service import unblock_team

log = logging.getLogger(__name__)

T = TypeVar("T")

BLOCK_REASON = "unpaid_invoice"
ZERO_TOTAL_STATUS = "skipped_zero_total"
CollectionMethod = Literal["charge_automatically", "send_invoice"]


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    """How hard one run tries. Defaults suit production; tests shorten the waits."""

    call_attempts: int = 3  # tries of one Stripe call within a run
    call_backoff_s: float = 0.25  # float-ok: first pause between them, doubling
    max_inline_wait_s: float = 5.0  # float-ok: a longer Retry-After defers the invoice instead
    lease: timedelta = timedelta(minutes=10)  # a crashed worker's claim expires after this
    backoff: Backoff = field(default_factory=Backoff)
    days_until_due: int = 30  # payment terms of send_invoice invoices
    batch: int = 50  # invoices claimed per transaction


@dataclass
class SyncReport:
    """What one run did, by invoice id."""

    synced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # zero total: not sent
    failed: dict[str, str] = field(default_factory=dict)  # id -> error

    def add(self, other: SyncReport) -> None:
        self.synced += other.synced
        self.skipped += other.skipped
        self.failed.update(other.failed)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What the sync needs of our invoice, read once in a short transaction."""

    id: str
    number: str | None
    team_id: str
    period: str
    currency: str
    total_minor: int
    collection_method: CollectionMethod
    team_email: str | None
    team_name: str | None
    customer_id: str | None
    lines: tuple[LineToSend, ...]
    parts: dict[int, StripeInvoice]


@dataclass(frozen=True, slots=True)
class _PartUpdate:
    """A part finalized and collected, as Stripe answered."""

    part: int
    remote: RemoteInvoice
    payment_failed_at: datetime | None  # set when the pay call was declined


class _Permanent(Exception):
    """No automatic retry can fix this; the invoice waits for a person."""


def apply_outcome(session: Session, invoice: Invoice, outcome: Outcome, now: datetime,
                  dunning_days: int) -> bool:
    """Move our invoice to the state its Stripe invoices are in, with the orchestrator
    notification and the unblock that go with it. Answers whether the status changed."""
    invoice.stripe_status = outcome.stripe_status
    if outcome.status == invoice.status:
        return False
    invoice.status = outcome.status
    if outcome.status == "paid":
        invoice.paid_at = outcome.paid_at or now
    elif outcome.status == "void":
        invoice.voided_at = outcome.voided_at or now
    elif outcome.status == "payment_failed" and invoice.payment_failed_at is None:
        invoice.payment_failed_at = outcome.payment_failed_at or now
    session.flush()
    data = {"invoice_id": invoice.id, "number": invoice.number, "team_id": invoice.team_id,
            "period": invoice.period, "currency": invoice.currency,
            "total": fmt_minor(invoice.total, invoice.currency),
            "stripe_invoice_id": invoice.stripe_invoice_id}
    if outcome.status == "paid":
        assert invoice.paid_at is not None
        enqueue_message(session, type="invoice.paid", team_id=invoice.team_id,
                        payload={**data, "paid_at": rfc3339(invoice.paid_at)},
                        key=f"invoice.paid:{invoice.id}", now=now)
    elif outcome.status == "payment_failed":
        assert invoice.payment_failed_at is not None
        blocks_at = invoice.payment_failed_at + timedelta(days=dunning_days)
        enqueue_message(session, type="invoice.payment_failed", team_id=invoice.team_id,
                        payload={**data, "payment_failed_at": rfc3339(invoice.payment_failed_at),
                                 "team_blocked_at": rfc3339(blocks_at)},
                        key=f"invoice.payment_failed:{invoice.id}", now=now)
    if outcome.status in ("paid", "void"):
        # Nothing is owed on this invoice any more: lift a dunning block unless another
        # invoice of the team is still overdue.
        cutoff = now - timedelta(days=dunning_days)
        if not repo.team_has_overdue(session, invoice.team_id, cutoff):
            unblock_team(session, invoice.team_id, BLOCK_REASON)
    return True


def part_states(parts: Sequence[StripeInvoice]) -> list[planning.PartState]:
    return [planning.PartState(p.stripe_status, p.payment_failed_at, p.paid_at, p.voided_at)
            for p in parts]


class InvoiceSync:
    """Syncs invoices with one gateway and policy; safe to share between threads."""

    def __init__(self, sessions: sessionmaker[Session], gateway: StripeGateway, *,
                 dunning_days: int = 7, policy: SyncPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sessions = sessions
        self.gateway = gateway
        self.dunning_days = dunning_days
        self.policy = policy or SyncPolicy()
        self._sleep = sleep

    # ---- runs ----------------------------------------------------------------------------

    def sync_due(self, *, now: datetime | None = None, limit: int | None = None,
                 workers: int = 1) -> SyncReport:
        """Sync every due invoice (at most `limit`), `workers` at a time."""
        moment = now or utc_now()
        report = SyncReport()
        done = 0
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        run = partial(self._sync_claimed, now=moment)
        try:
            while limit is None or done < limit:
                batch = self.policy.batch if limit is None else min(self.policy.batch,
                                                                    limit - done)
                with transaction(self.sessions) as session:
                    claimed = repo.claim_due(session, moment, moment + self.policy.lease, batch)
                if not claimed:
                    break
                done += len(claimed)
                results = pool.map(lambda c: run(*c), claimed) if pool else (
                    run(*c) for c in claimed)
                for result in results:
                    report.add(result)
        finally:
            if pool is not None:
                pool.shutdown()
        return report

    def sync_invoice(self, invoice_id: str, *, now: datetime | None = None) -> SyncReport:
        """Sync one invoice now, whatever its schedule (finalized or sync_failed only)."""
        moment = now or utc_now()
        with transaction(self.sessions) as session:
            claimed = repo.claim_one(session, invoice_id, moment + self.policy.lease)
        if claimed is None:
            return SyncReport()
        return self._sync_claimed(claimed[0], claimed[1], moment)

    # ---- one invoice ---------------------------------------------------------------------

    def _sync_claimed(self, invoice_id: str, attempt: int, now: datetime) -> SyncReport:
        report = SyncReport()
        # What Stripe answered for each part, written with the outcome in one transaction:
        # losing it in a crash costs only a re-read (the resume path looks before it writes).
        progress: list[_PartUpdate] = []
        try:
            snapshot = self._snapshot(invoice_id)
            if snapshot.total_minor == 0:
                self._finish_zero(invoice_id, now)
                report.skipped.append(invoice_id)
                return report
            parts = self._plan(snapshot)
            customer = snapshot.customer_id or self._ensure_customer(snapshot)
            for part in parts:
                update = self._sync_part(snapshot, part, customer, attempt, now)
                if update is not None:
                    progress.append(update)
            self._finish(invoice_id, progress, now)
            report.synced.append(invoice_id)
        except (_Permanent, PlanError) as exc:
            self._fail(invoice_id, str(exc), None, progress, now)
            report.failed[invoice_id] = str(exc)
        except StripeFailure as exc:
            next_at = None
            if exc.retryable:
                next_at = self.policy.backoff.next_attempt(now, attempt, exc.retry_after)
            self._fail(invoice_id, exc.message, next_at, progress, now)
            report.failed[invoice_id] = exc.message
        except Exception as exc:
            # A bug or the database: retried later like a transient failure, and said on the
            # invoice (if the database lets us).
            log.exception("stripe sync crashed", extra={"invoice_id": invoice_id})
            report.failed[invoice_id] = f"internal error: {exc!r}"
            with contextlib.suppress(Exception):
                self._fail(invoice_id, f"internal error: {type(exc).__name__}",
                           self.policy.backoff.next_attempt(now, attempt), progress, now)
        return report

    def _snapshot(self, invoice_id: str) -> _Snapshot:
        with transaction(self.sessions) as session:
            invoice = repo.get_invoice(session, invoice_id)
            if invoice is None:
                raise _Permanent(f"no invoice {invoice_id}")
            team = repo.get_team(session, invoice.team_id)
            if team is None:
                raise _Permanent(f"no team {invoice.team_id}")
            method = team_settings.collection_method(session, team.id)
            if method not in ("charge_automatically", "send_invoice"):
                raise _Permanent(f"team {team.id} has collection_method {method!r}")
            currency = invoice.currency.lower()
            lines = tuple(
                LineToSend(line.position, line.kind, line.description,
                           planning.to_minor(line.amount, currency), line.service_start,
                           line.service_end,
                           _line_metadata(line))
                for line in invoices_repo.lines_of(session, [invoice_id]).get(invoice_id, []))
            return _Snapshot(
                id=invoice.id, number=invoice.number, team_id=invoice.team_id,
                period=invoice.period, currency=currency,
                total_minor=planning.to_minor(invoice.total, currency),
                collection_method="send_invoice" if method == "send_invoice"
                else "charge_automatically",
                team_email=team.email, team_name=team.name,
                customer_id=repo.customer_id(session, invoice.team_id), lines=lines,
                parts={p.part: p for p in repo.parts_of(session, invoice_id)})

    @staticmethod
    def _plan(snapshot: _Snapshot) -> tuple[PartPlan, ...]:
        lines_total = sum(line.amount_minor for line in snapshot.lines)
        if lines_total != snapshot.total_minor:
            raise PlanError(f"lines sum to {lines_total} minor units, the invoice total is "
                            f"{snapshot.total_minor}")
        parts = planning.plan_parts(snapshot.lines)
        stored = {p.part: p.parts for p in snapshot.parts.values()}
        if stored and any(count != len(parts) for count in stored.values()):
            raise PlanError("the stored Stripe invoices were planned with another split")
        return parts

    def _call(self, fn: Callable[[], T]) -> T:
        """One Stripe call, retried a few times on transient failures with the same
        idempotency key (the callers' keys are deterministic, so a retry is always safe)."""
        attempt = 1
        while True:
            try:
                return fn()
            except StripeFailure as exc:
                if not exc.retry_now or attempt >= self.policy.call_attempts:
                    raise
                wait = self.policy.call_backoff_s * 2 ** (attempt - 1)
                if exc.retry_after is not None:
                    if exc.retry_after > self.policy.max_inline_wait_s:
                        raise
                    wait = max(wait, exc.retry_after)
                self._sleep(wait)
                attempt += 1

    def _ensure_customer(self, snapshot: _Snapshot) -> str:
        team_id = snapshot.team_id
        found = self._call(lambda: self.gateway.find_customers(team_id))
        # Several can only exist if someone made them by hand; the oldest is the original.
        matching = sorted((c for c in found if c.metadata.get("team_id") == team_id),
                          key=lambda c: (c.created, c.id))
        if matching:
            customer_id = matching[0].id
        else:
            customer_id = self._call(lambda: self.gateway.create_customer(
                team_id=team_id, email=snapshot.team_email, name=snapshot.team_name,
                idempotency_key=planning.customer_key(team_id))).id
        with transaction(self.sessions) as session:
            return repo.save_customer(session, team_id, customer_id)

    def _draft(self, snapshot: _Snapshot, part: PartPlan, customer: str) -> DraftInvoice:
        metadata = {"invoice_id": snapshot.id, "invoice_number": snapshot.number or "",
                    "team_id": snapshot.team_id, "period": snapshot.period,
                    "part": str(part.index), "parts": str(part.count)}
        description = f"Sandbox usage {snapshot.period}, invoice {snapshot.number or snapshot.id}"
        if part.count > 1:
            description += f" (part {part.index + 1} of {part.count})"
        return DraftInvoice(
            customer=customer, currency=snapshot.currency,
            collection_method=snapshot.collection_method,
            days_until_due=self.policy.days_until_due
            if snapshot.collection_method == "send_invoice" else None,
            description=description, metadata=metadata)

    def _sync_part(self, snapshot: _Snapshot, part: PartPlan, customer: str, attempt: int,
                   now: datetime) -> _PartUpdate | None:
        """Bring one Stripe invoice to finalized and collected; answers what Stripe said."""
        row = snapshot.parts.get(part.index)
        remote: RemoteInvoice | None = None
        # Only the first attempt can be sure nothing of this part exists in Stripe yet.
        known_empty = False
        if row is None:
            remote = self._find_or_create(snapshot, part, customer, attempt)
            known_empty = attempt == 1
            with transaction(self.sessions) as session:  # the id, the moment it is known
                row = repo.insert_part(session, {
                    "invoice_id": snapshot.id, "part": part.index, "parts": part.count,
                    "stripe_invoice_id": remote.id, "stripe_customer_id": customer,
                    "item_count": len(part.lines), "amount_minor": part.total_minor,
                    "stripe_status": remote.status, "created_at": now, "updated_at": now})
            if row.stripe_invoice_id != remote.id:
                raise _Permanent(f"part {part.index} is already Stripe invoice "
                                 f"{row.stripe_invoice_id}, found {remote.id} as well")
        stripe_id = row.stripe_invoice_id
        status = row.stripe_status
        if row.collected_at is not None:
            return None
        if status == "draft":
            if not known_empty:
                remote = self._call(lambda: self.gateway.retrieve_invoice(stripe_id))
                status = remote.status
            if status == "draft":
                remote = self._fill_and_finalize(snapshot, part, customer, stripe_id,
                                                 known_empty)
                status = remote.status
        if remote is not None and remote.status != "draft" and remote.total != part.total_minor:
            # Finalized in Stripe by someone else before every item was attached: collecting
            # would bill the wrong amount, and only a person can sort it out.
            raise _Permanent(f"Stripe invoice {stripe_id} was finalized with a total of "
                             f"{remote.total} minor units, expected {part.total_minor}")
        if status != "open":
            # Paid on finalization (zero amount), or voided or written off in Stripe by
            # finance meanwhile: there is nothing to collect.
            if remote is None:
                remote = self._call(lambda: self.gateway.retrieve_invoice(stripe_id))
            return _PartUpdate(part.index, remote, None)
        return self._collect(snapshot, part, stripe_id, now)

    def _find_or_create(self, snapshot: _Snapshot, part: PartPlan, customer: str,
                        attempt: int) -> RemoteInvoice:
        if attempt > 1:
            # An earlier attempt may have created it and died before storing the id; its
            # idempotency key may have expired (24 h), so look first.
            found = self._call(lambda: self.gateway.find_invoices(
                {"invoice_id": snapshot.id, "part": str(part.index)}))
            mine = [f for f in found if f.customer == customer]
            if mine:
                return mine[-1]  # search answers newest first; the oldest is the original
        draft = self._draft(snapshot, part, customer)
        return self._call(lambda: self.gateway.create_invoice(
            draft, idempotency_key=planning.create_key(snapshot.id, part.index)))

    def _fill_and_finalize(self, snapshot: _Snapshot, part: PartPlan, customer: str,
                           stripe_id: str, known_empty: bool) -> RemoteInvoice:
        present: set[int] = set()
        if not known_empty:
            for attached in self._call(lambda: self.gateway.list_items(stripe_id)):
                position = attached.metadata.get("line_position")
                if attached.metadata.get("invoice_id") == snapshot.id and position is not None:
                    present.add(int(position))
        for line in part.lines:
            if line.position in present:
                continue
            item = DraftItem(
                customer=customer, invoice=stripe_id, amount=line.amount_minor,
                currency=snapshot.currency, description=line.description,
                metadata={**line.metadata, "invoice_id": snapshot.id,
                          "line_position": str(line.position), "kind": line.kind},
                period=_item_period(line))
            key = planning.item_key(snapshot.id, line.position)
            self._call(partial(self.gateway.create_item, item, idempotency_key=key))
        finalized = self._call(lambda: self.gateway.finalize_invoice(
            stripe_id, idempotency_key=planning.finalize_key(snapshot.id, part.index)))
        return finalized

    def _collect(self, snapshot: _Snapshot, part: PartPlan, stripe_id: str,
                 now: datetime) -> _PartUpdate:
        key = planning.collect_key(snapshot.id, part.index, snapshot.collection_method)
        if snapshot.collection_method == "send_invoice":
            return _PartUpdate(part.index, self._call(
                lambda: self.gateway.send_invoice(stripe_id, idempotency_key=key)), None)
        try:
            remote = self._call(lambda: self.gateway.pay_invoice(stripe_id,
                                                                 idempotency_key=key))
        except CardDeclined:
            # A payment outcome, not a sync failure: the dunning window starts now.
            remote = self._call(lambda: self.gateway.retrieve_invoice(stripe_id))
            return _PartUpdate(part.index, remote, now if remote.status == "open" else None)
        except StripeFailure as exc:
            if exc.kind != "invalid":
                raise
            # E.g. "already paid" (our earlier pay, once its key expired): believe Stripe's
            # current state.
            remote = self._call(lambda: self.gateway.retrieve_invoice(stripe_id))
            if remote.status == "open":
                raise
        return _PartUpdate(part.index, remote, None)

    @staticmethod
    def _save_progress(session: Session, invoice_id: str, progress: Sequence[_PartUpdate],
                       now: datetime) -> None:
        for update in progress:
            remote = update.remote
            failed_at = update.payment_failed_at
            if remote.status == "uncollectible" and failed_at is None:
                failed_at = remote.marked_uncollectible_at or now
            repo.update_part(
                session, invoice_id, update.part, status=remote.status, now=now,
                finalized_at=now, collected_at=now,
                paid_at=(remote.paid_at or now) if remote.status == "paid" else None,
                payment_failed_at=failed_at,
                voided_at=(remote.voided_at or now) if remote.status == "void" else None)

    def _finish(self, invoice_id: str, progress: Sequence[_PartUpdate], now: datetime) -> None:
        with transaction(self.sessions) as session:
            invoice = repo.get_invoice(session, invoice_id, lock=True)
            self._save_progress(session, invoice_id, progress, now)
            if invoice is None or invoice.status not in ("finalized", "sync_failed"):
                return
            outcome = planning.invoice_outcome(part_states(repo.parts_of(session, invoice_id)))
            invoice.synced_at = now
            invoice.sync_error = None
            invoice.next_sync_at = None
            invoice.status = "synced"
            apply_outcome(session, invoice, outcome, now, self.dunning_days)

    def _finish_zero(self, invoice_id: str, now: datetime) -> None:
        with transaction(self.sessions) as session:
            invoice = repo.get_invoice(session, invoice_id, lock=True)
            if invoice is None or invoice.status not in ("finalized", "sync_failed"):
                return
            invoice.status = "synced"
            invoice.stripe_status = ZERO_TOTAL_STATUS
            invoice.synced_at = now
            invoice.sync_error = None
            invoice.next_sync_at = None

    def _fail(self, invoice_id: str, error: str, next_sync_at: datetime | None,
              progress: Sequence[_PartUpdate], now: datetime) -> None:
        log.warning("stripe sync failed", extra={"invoice_id": invoice_id, "error": error,
                                                 "retry_at": next_sync_at})
        with transaction(self.sessions) as session:
            self._save_progress(session, invoice_id, progress, now)
            repo.record_sync_failure(session, invoice_id, error, next_sync_at)


def _item_period(line: LineToSend) -> tuple[int, int] | None:
    """Stripe shows an item's period by its first and last day: the last second of the
    line's [start, end) is its end."""
    if line.service_start is None or line.service_end is None:
        return None
    start = int(line.service_start.timestamp())
    return start, max(start, int(line.service_end.timestamp()) - 1)


def _line_metadata(line: InvoiceLine) -> dict[str, str]:
    """The line's internal ids, which its description never names."""
    found = {k: str(v) for k, v in (line.details or {}).items() if v}
    if line.price_version_id:
        found["price_version_id"] = line.price_version_id
    return found
