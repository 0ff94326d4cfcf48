"""The month close: every team's invoice for a month, once, however often and wherever it runs.

Shape of a run:

1. Refuse before the month's end plus the grace period (`settings.close_grace_s`) unless
   forced; never before the month's end.
2. One pass of bulk reads outside any lock: every team's usage of the month (one statement for
   all teams), plan assignments, which earlier closed months may hold late usage, and that
   late usage. Usage reads need no lock: what the close does not see now is billed later as an
   adjustment, because each invoice records the usage it billed.
3. Teams in id order, a chunk at a time, each chunk one transaction under the invoicing lock
   (`repository.INVOICING_LOCK`): skip teams whose invoice exists, read what was billed and
   the credits left, rate, store drafts, number them (gap-free), finalize, apply credits,
   queue `invoice.finalized`. If a chunk fails, its teams are retried one per transaction, so
   one bad team costs only its own invoice; it is reported with the reason.
   Before finalizing, each invoice is checked against its usage re-derived from the raw
   lifecycle events (read once for the whole month in step 2, as of the same instant; see
   `billing.verification`): a difference keeps that invoice a draft, out of Stripe, raises
   `invoice.verification_failed` and is reported as a failure with the differences. Running
   the close again drops such drafts and makes them anew from what is stored then.
4. A run record (`invoice_close_runs`) with a heartbeat; a crashed run is resumed by running
   the close again, which skips what exists.

Two closes of the same month at once (threads, machines) interleave chunk by chunk on the
lock; the second finds the first's invoices and counts them as already existing. The unique
index on (team_id, period) for period invoices is the last guard.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from billing.invoices import repository as repo
from billing.invoices import service
from billing.invoices.assemble import (
    PlanAssignment,
    RatedTeam,
    TeamFacts,
    VersionUsage,
    plan_periods,
)
from billing.invoices.service import LATE_COMMIT_MARGIN, MonthContext
from billing.verification import service as verification
from metering.config import Settings
from metering.core.clock import format_period, month_start, next_month_start, utc_now
from metering.core.money import add, fmt_minor
from metering.db import transaction
from metering.errors import BadRequest, Conflict

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 500
NOTHING_TO_BILL = "nothing to bill"
VERIFICATION_FAILED = "held: verification found differences"
FAILED = "failed"
# A run whose heartbeat is older than this is taken for crashed by the scheduled job.
STALE_RUN = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class TeamFailure:
    team_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class InvoicePreview:
    """An invoice a dry run would make."""

    team_id: str
    currency: str
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal
    lines: int


@dataclass(slots=True)
class CloseSummary:
    """What a close did; `total_amount` sums the invoices it made (per currency)."""

    period: str
    dry_run: bool
    run_id: str | None = None
    teams_considered: int = 0
    invoices_made: int = 0
    already_existed: int = 0
    total_amount: dict[str, Decimal] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    failures: list[TeamFailure] = field(default_factory=list)
    previews: list[InvoicePreview] = field(default_factory=list)
    seconds: float = 0.0  # float-ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period, "dry_run": self.dry_run, "run_id": self.run_id,
            "teams_considered": self.teams_considered, "invoices_made": self.invoices_made,
            "already_existed": self.already_existed,
            "total_amount": {c: fmt_minor(a, c) for c, a in sorted(self.total_amount.items())},
            "skipped": dict(sorted(self.skipped.items())),
            "failures": [{"team_id": f.team_id, "reason": f.reason} for f in self.failures],
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[int, int, CloseSummary], None]


@dataclass(frozen=True, slots=True)
class _Prepass:
    ctx: MonthContext
    usage_read_at: datetime
    teams: list[str]
    usage: dict[str, tuple[VersionUsage, ...]]
    assignments: dict[str, list[PlanAssignment]]
    candidates: dict[str, list[str]]
    late: dict[str, dict[tuple[str, str], VersionUsage]]
    # The same usage re-derived from the raw events, for the check before finalizing.
    derived: dict[str, tuple[VersionUsage, ...]] = field(default_factory=dict)
    derived_late: dict[str, dict[tuple[str, str], VersionUsage]] = field(default_factory=dict)


def check_due(period: str, now: datetime, settings: Settings, force: bool) -> None:
    """Refuse a close before the month has ended, and before its grace unless forced."""
    _, end = service.parse_billing_period(period)
    if now < end:
        raise Conflict(f"{period} has not ended yet (it ends {end.isoformat()})",
                       period=period)
    due = end + timedelta(seconds=settings.close_grace_s)
    if now < due and not force:
        raise Conflict(
            f"{period} can be closed from {due.isoformat()} ({settings.close_grace_s} s grace "
            "for late events); pass force to close it now", period=period,
            due_at=due.isoformat())


def _billable_plan(assignments: Sequence[PlanAssignment], ctx: MonthContext) -> bool:
    """A fee or a commitment for at least a second of the month."""
    try:
        periods, _ = plan_periods(assignments, ctx.versions, ctx.start, ctx.end)
    except ValueError:
        return True  # rate it, so that the team fails alone, with the reason
    return any((p.monthly_fee > 0 or p.minimum_commitment > 0)
               and (p.end - p.start) >= timedelta(seconds=1) for p in periods)


def _prepass(session: Session, period: str, now: datetime, settings: Settings,
             check: bool = True) -> _Prepass:
    start, end = service.parse_billing_period(period)
    read_at = repo.db_now(session)  # before any usage is read
    ctx = MonthContext(period, start, end, now, settings.currency, repo.plan_versions(session))
    usage = service.month_usage(session, start, end, now, settings)
    assignments = repo.plan_assignments(session, start, end)
    candidates: dict[str, list[str]] = {}
    if repo.anything_closed_before(session, period):
        candidates = repo.adjustment_candidates(session, period, start, LATE_COMMIT_MARGIN)
    late = service.late_usage(session, candidates, now, settings)
    teams = set(usage) | set(candidates)
    teams |= {t for t, a in assignments.items() if t not in teams and _billable_plan(a, ctx)}
    derived: dict[str, tuple[VersionUsage, ...]] = {}
    derived_late: dict[str, dict[tuple[str, str], VersionUsage]] = {}
    if check:
        derived = verification.derived_usage(session, period, sorted(teams), read_at=read_at,
                                             now=now, settings=settings)
        derived_late = dict(verification.derived_late(session, candidates, read_at=read_at,
                                                      now=now, settings=settings))
    return _Prepass(ctx, read_at, sorted(teams), usage, assignments, candidates, late,
                    derived, derived_late)


def _rate_chunk(session: Session, pre: _Prepass, teams: Sequence[str], summary: CloseSummary,
                ) -> tuple[list[RatedTeam], int, dict[str, TeamFacts]]:
    """Rate the chunk's teams that have no invoice yet; answer (rated, already existing, the
    facts they were rated from)."""
    existing = repo.existing_period_invoices(session, pre.ctx.period, teams)
    todo = [t for t in teams if t not in existing]
    known = repo.existing_teams(session, todo)
    facts = service.gather_facts(session, pre.ctx, [t for t in todo if t in known],
                                 usage=pre.usage, assignments=pre.assignments,
                                 candidates=pre.candidates, late=pre.late)
    rated: list[RatedTeam] = []
    for team_id in todo:
        if team_id not in known:
            summary.failures.append(TeamFailure(team_id, "no such team (usage of a team row "
                                                         "that does not exist)"))
            summary.skipped[FAILED] += 1
            continue
        try:
            item = service.rate_facts(facts[team_id], pre.ctx.versions)
        except (ValueError, TypeError) as exc:
            summary.failures.append(TeamFailure(team_id, f"cannot rate: {exc}"))
            summary.skipped[FAILED] += 1
            continue
        if item.anything_billed:
            rated.append(item)
        else:
            summary.skipped[NOTHING_TO_BILL] += 1
    return rated, len(existing), facts


def _count_made(summary: CloseSummary, stored: Sequence[repo.StoredInvoice]) -> None:
    summary.invoices_made += len(stored)
    for invoice in stored:
        summary.total_amount[invoice.currency] = add(
            summary.total_amount.get(invoice.currency, Decimal(0)), invoice.total)


def _close_chunk(sessions: sessionmaker[Session], pre: _Prepass, teams: Sequence[str],
                 summary: CloseSummary, now: datetime) -> None:
    """One transaction for the chunk: lock, rate what is missing, store, finalize."""
    scratch = CloseSummary(summary.period, summary.dry_run)
    with transaction(sessions) as session:
        repo.lock_invoicing(session)
        repo.drop_drafts(session, pre.ctx.period, teams)
        rated, existed, facts = _rate_chunk(session, pre, teams, scratch)
        checks = {item.team_id: verification.check_rated(
            facts[item.team_id], pre.ctx.versions, usage=pre.derived.get(item.team_id, ()),
            late=pre.derived_late.get(item.team_id, {}), rated=item.rated,
            period=pre.ctx.period) for item in rated}
        held = {team for team, check in checks.items() if not check.ok}
        made: dict[str, str] = {}
        stored = repo.store_and_finalize(session, rated, now=now,
                                         usage_read_at=pre.usage_read_at, hold=held, made=made)
        service.notify_finalized(session, stored, now)
        numbers = {invoice.team_id: invoice.number for invoice in stored}
        recorded = [verification.for_invoice(checks[team], invoice_id, numbers.get(team))
                    for team, invoice_id in made.items()]
        verification.record(session, recorded, "close", now)
        for check in recorded:
            if not check.ok:
                scratch.failures.append(TeamFailure(
                    check.team_id, f"invoice {check.invoice_id} held as a draft: "
                                   f"{check.reason()}"))
                scratch.skipped[VERIFICATION_FAILED] += 1
    # Counted only once committed: a chunk that fails is redone team by team.
    summary.already_existed += existed + (len(rated) - len(stored))
    summary.skipped.update(scratch.skipped)
    summary.failures.extend(scratch.failures)
    _count_made(summary, stored)


def _dry_chunk(sessions: sessionmaker[Session], pre: _Prepass, teams: Sequence[str],
               summary: CloseSummary) -> None:
    session = sessions()
    try:
        rated, existed, _ = _rate_chunk(session, pre, teams, summary)
    finally:
        session.rollback()
        session.close()
    summary.already_existed += existed
    for item in rated:
        r = item.rated
        summary.previews.append(InvoicePreview(item.team_id, r.currency, r.subtotal,
                                               r.credits_applied, r.total, len(r.lines)))
        summary.total_amount[r.currency] = add(
            summary.total_amount.get(r.currency, Decimal(0)), r.total)
    summary.invoices_made += len(rated)


def close_period(
    sessions: sessionmaker[Session], period: str, settings: Settings, *,
    dry_run: bool = False, force: bool = False, now: datetime | None = None,
    chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None,
) -> CloseSummary:
    """Close `period` ("YYYY-MM"): make every team's invoice that does not exist yet.

    `dry_run` rates and reports without writing anything (in the summary, `invoices_made`
    then counts the invoices that would be made and `previews` lists them)."""
    started = time.perf_counter()
    now = now or utc_now()
    service.parse_billing_period(period)
    check_due(period, now, settings, force)
    summary = CloseSummary(period, dry_run)
    run_id: str | None = None
    if not dry_run:
        with transaction(sessions) as session:
            run_id = repo.start_run(session, period, now, force)
        summary.run_id = run_id
    try:
        with transaction(sessions) as session:
            pre = _prepass(session, period, now, settings, check=not dry_run)
        summary.teams_considered = len(pre.teams)
        done = 0
        for index in range(0, len(pre.teams), max(chunk_size, 1)):
            chunk = pre.teams[index:index + chunk_size]
            if dry_run:
                _dry_chunk(sessions, pre, chunk, summary)
            else:
                try:
                    _close_chunk(sessions, pre, chunk, summary, now)
                except Exception:
                    log.exception("close chunk failed; retrying its teams one by one",
                                  extra={"period": period, "first_team": chunk[0]})
                    _one_by_one(sessions, pre, chunk, summary, now)
                assert run_id is not None
                with transaction(sessions) as session:
                    repo.heartbeat_run(session, run_id, utc_now(), summary.invoices_made,
                                       summary.already_existed, len(summary.failures))
            done += len(chunk)
            if progress is not None:
                progress(done, len(pre.teams), summary)
    except BaseException as exc:
        if run_id is not None:
            _finish(sessions, run_id, summary, "failed", error=repr(exc))
        raise
    summary.seconds = time.perf_counter() - started
    if run_id is not None:
        _finish(sessions, run_id, summary,
                "completed_with_errors" if summary.failures else "completed")
    return summary


def _one_by_one(sessions: sessionmaker[Session], pre: _Prepass, teams: Sequence[str],
                summary: CloseSummary, now: datetime) -> None:
    for team_id in teams:
        try:
            _close_chunk(sessions, pre, [team_id], summary, now)
        except Exception as exc:
            log.exception("closing one team failed", extra={"team_id": team_id})
            summary.failures.append(TeamFailure(team_id, f"{type(exc).__name__}: {exc}"))
            summary.skipped[FAILED] += 1


def _finish(sessions: sessionmaker[Session], run_id: str, summary: CloseSummary, status: str,
            error: str | None = None) -> None:
    body = summary.as_dict()
    if error is not None:
        body["error"] = error
    try:
        with transaction(sessions) as session:
            repo.finish_run(session, run_id, utc_now(), status, summary.teams_considered,
                            summary.invoices_made, summary.already_existed,
                            len(summary.failures), body)
    except Exception:  # the run record is bookkeeping; never mask the close's own outcome
        log.exception("could not record the end of close run", extra={"run_id": run_id})


def previous_period(now: datetime) -> str:
    return format_period(month_start(now) - timedelta(days=1))


def _wants_run(run: repo.RunRow | None, now: datetime) -> bool:
    """A month never closed, or whose last run failed, crashed or left teams out."""
    if run is None:
        return True
    if run.status == "completed":
        return False
    return not (run.status == "running" and now - run.heartbeat_at < STALE_RUN)


def due_periods(sessions: sessionmaker[Session], settings: Settings,
                now: datetime | None = None) -> list[str]:
    """Every ended month past its grace that still wants a close, oldest first: from the
    first month anything could be billed for (an execution's start, a plan assignment) to
    last month."""
    now = now or utc_now()
    last = previous_period(now)
    try:
        check_due(last, now, settings, force=False)
    except (Conflict, BadRequest):
        last = previous_period(month_start(now) - timedelta(days=1))
    with transaction(sessions) as session:
        first = repo.first_billable_month(session)
        if first is None:
            return []
        runs = repo.latest_runs(session, first, last)
    out: list[str] = []
    cursor = month_start(first)
    while format_period(cursor) <= last:
        period = format_period(cursor)
        if _wants_run(runs.get(period), now):
            out.append(period)
        cursor = next_month_start(cursor)
    return out


def close_due_periods(sessions: sessionmaker[Session], settings: Settings,
                      now: datetime | None = None) -> list[CloseSummary]:
    """The scheduled job: close every ended month that was never closed, oldest first, once
    its grace period has passed (late usage of a month already closed goes on the next
    invoice as an adjustment; a closed month is never reopened).

    Idempotent and cheap when there is nothing to do: a month whose latest run completed is
    left alone, as is one whose run is alive on another worker (fresh heartbeat). A run that
    completed with errors or crashed is run again (it skips what exists). A month that fails
    stops the job, so that no newer month is closed ahead of it."""
    now = now or utc_now()
    done: list[CloseSummary] = []
    for period in due_periods(sessions, settings, now):
        summary = close_period(sessions, period, settings, now=now)
        # A month with nobody to invoice (a new install's previous month) closes quietly.
        level = logging.INFO if summary.teams_considered or summary.failures else logging.DEBUG
        log.log(level, "month closed", extra={"summary": summary.as_dict()})
        done.append(summary)
        # The proof of the month as it now stands, recorded per invoice.
        with transaction(sessions) as session:
            report = verification.verify_period(session, period, settings, now=now)
        level = logging.INFO if report.ok else logging.ERROR
        log.log(level, "month verified", extra={
            "period": period, "invoices": len(report.checks),
            "differences": [c.reason() for c in report.checks if not c.ok][:20]})
    return done
