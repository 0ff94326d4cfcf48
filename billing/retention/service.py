"""Retention of per-minute samples: whole months of `sample_minutes` are dropped once they are
older than the retention window and billed for good.

Samples never bill (bills come from lifecycle events), but they are the evidence behind a
month's metrics, so a month goes only when it is over for finance too:

- it is older than the window: the current month and the `sample_retention_months` before it
  (at least one, so never the current or the previous month) are kept;
- a month close completed for it (`invoice_close_runs`), and
- no invoice of that period is a draft, and every team with usage in that month has a live
  (finalized or later, not void) invoice of that period or one that billed that month's usage
  as a late adjustment.

Months go oldest first and the first month that must stay holds back the newer ones: the
horizon (`sample_retention.kept_from`, the first month kept) stays a single instant, and a
late sample is stored or discarded by one comparison. A month without samples holds nothing
back (there is nothing of it to keep). How the partitions are dropped is
`metering.ingest.partitions.advance_horizon`.

The job is idempotent and runs on any number of workers: one run at a time holds
`RETENTION_LOCK` (the others return at once), and a run with nothing to drop changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings
from metering.core.clock import format_period, month_start, next_month_start, utc_now
from metering.db import transaction
from metering.ingest import partitions as samples
from metering.usage import usage_totals

log = logging.getLogger(__name__)

RETENTION_LOCK = 0x72657465  # "rete"; pg_try_advisory_xact_lock key, unique in this service

CLOSED_AND_INVOICED = "closed and invoiced"
WITHIN_RETENTION = "within retention"
HELD_BACK = "an older month is kept"

_COMPLETED_CLOSE = text("""
SELECT EXISTS (SELECT 1 FROM invoice_close_runs WHERE period = :period AND status = 'completed')
""")

_DRAFTS = text("SELECT count(*) FROM invoices WHERE period = :period AND status = 'draft'")

# Teams (of the given ones) whose usage of the period no live invoice accounts for: neither
# the period's own invoice nor an adjustment that billed that month late.
_UNINVOICED_TEAMS = text("""
SELECT t.team_id FROM unnest(CAST(:teams AS text[])) AS t(team_id)
WHERE NOT EXISTS (
    SELECT 1 FROM invoices i
    WHERE i.team_id = t.team_id AND i.period = :period
      AND i.status NOT IN ('draft', 'void'))
  AND NOT EXISTS (
    SELECT 1 FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id
    WHERE u.team_id = t.team_id AND u.usage_period = :period
      AND i.status NOT IN ('draft', 'void'))
ORDER BY 1
""")


@dataclass(frozen=True, slots=True)
class MonthVerdict:
    """A month older than the window with samples stored, and why it goes or stays."""

    period: str
    drop: bool
    reason: str
    bytes: int = 0


@dataclass(slots=True)
class RetentionSummary:
    dry_run: bool
    retention_months: int
    kept_from_before: str | None = None
    kept_from: str | None = None
    dropped: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    verdicts: list[MonthVerdict] = field(default_factory=list)
    skipped: str | None = None  # why nothing was looked at (another run holds the lock)

    @property
    def kept(self) -> list[MonthVerdict]:
        return [v for v in self.verdicts if not v.drop]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "retention_months": self.retention_months,
            "kept_from_before": self.kept_from_before, "kept_from": self.kept_from,
            "dropped": self.dropped, "bytes_freed": self.bytes_freed,
            "months": [{"period": v.period, "drop": v.drop, "reason": v.reason,
                        "bytes": v.bytes} for v in self.verdicts],
            "skipped": self.skipped,
        }


def window_start(now: datetime, months: int) -> datetime:
    """The first month kept by age: the current month and `months` before it (at least 1)."""
    return samples.add_months(month_start(now), -max(months, 1))


def why_kept(session: Session, month: datetime, now: datetime, settings: Settings) -> str | None:
    """None when the month is closed and invoiced for good; otherwise the reason to keep it."""
    period = format_period(month)
    if not session.execute(_COMPLETED_CLOSE, {"period": period}).scalar_one():
        return "no completed month close"
    drafts = int(session.execute(_DRAFTS, {"period": period}).scalar_one())
    if drafts:
        return f"{drafts} draft invoice(s)"
    teams = sorted(usage_totals(session, month, next_month_start(month), now,
                                timedelta(seconds=settings.stale_after_s)))
    if not teams:
        return None
    missing = [str(r[0]) for r in session.execute(
        _UNINVOICED_TEAMS, {"teams": teams, "period": period})]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        return f"{len(missing)} team(s) with usage not invoiced ({shown})"
    return None


def run_retention(
    sessions: sessionmaker[Session], settings: Settings, *, dry_run: bool = False,
    now: datetime | None = None,
) -> RetentionSummary:
    """Drop the sample partitions of every month that may go (see the module); with
    `dry_run`, only say what would go and why the others stay."""
    now = now or utc_now()
    keep_months = max(settings.sample_retention_months, 1)
    summary = RetentionSummary(dry_run, keep_months)
    cutoff = window_start(now, keep_months)
    with transaction(sessions) as session:
        if not dry_run and not session.execute(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RETENTION_LOCK}).scalar_one():
            summary.skipped = "another retention run is in progress"
            return summary
        before = samples.kept_from(session)
        summary.kept_from_before = format_period(before) if before else None
        sizes = samples.partition_bytes(session)
        drop: list[datetime] = []
        horizon = cutoff
        for month in sorted(m for m in sizes if m < cutoff):
            period = format_period(month)
            reason = why_kept(session, month, now, settings)
            if reason is None and horizon < cutoff:  # an older month stays: this one waits
                reason = HELD_BACK
            if reason is None:
                drop.append(month)
                summary.verdicts.append(
                    MonthVerdict(period, True, CLOSED_AND_INVOICED, sizes[month]))
            else:
                horizon = min(horizon, month)
                summary.verdicts.append(MonthVerdict(period, False, reason, sizes[month]))
        if before is not None and before >= horizon:
            horizon = before
        if dry_run:
            summary.kept_from = format_period(horizon)
            summary.dropped = [format_period(m) for m in drop]
            summary.bytes_freed = sum(sizes[m] for m in drop)
            return summary
        move = samples.advance_horizon(session, horizon, drop, now)
    summary.kept_from = format_period(move.kept_from) if move.kept_from else None
    summary.dropped = [format_period(m) for m in move.dropped]
    summary.bytes_freed = move.bytes_freed
    if move.dropped:
        log.info("sample partitions dropped", extra={"summary": summary.as_dict()})
    for verdict in summary.kept:
        log.info("sample month kept past retention",
                 extra={"period": verdict.period, "reason": verdict.reason})
    return summary
