"""Ingest of orchestrator event batches: validate, deduplicate, store, derive.

Answers per batch how many events were accepted, duplicates and rejected, with an error per
rejected index. Everything accepted is committed before the answer (the caller's unit of
work commits). Samples (`host_stats`) go to the pending table and are folded into minute
rows later; lifecycle events are stored and their executions recomputed at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from metering import known
from metering.core.clock import from_ms, to_ms, utc_now
from metering.core.events import (
    DEFAULT_MAX_AGE_DAYS,
    EventError,
    SandboxEvent,
    same_key,
    validate_batch,
)
from metering.db import RunAgain, pipeline
from metering.executions import repository as executions_repo
from metering.executions import service as executions
from metering.executions.repository import ExecutionKey, Statements
from metering.ingest import repository as repo
from metering.teams import service as teams

# Samples older than this may already be folded into minute rows; the fold itself leaves one
# more minute of margin, so a fresh sample never needs the slower check.
FOLD_SAFE_AGE = timedelta(minutes=2)
FOLD_AGE = timedelta(minutes=3)


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    errors: list[EventError] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": [e.as_dict() for e in sorted(self.errors, key=lambda e: e.index)],
        }


def _conflict(event: SandboxEvent) -> EventError:
    return EventError(
        event.index, event.id, "conflict",
        f"an event with source {event.source!r} and id {event.id!r} was already received "
        "with different content; it was not stored",
    )


def _foreign_team(event: SandboxEvent) -> EventError:
    # The owner is not named: the sender of this event need not be entitled to know it.
    return EventError(
        event.index, event.id, "conflict",
        f"execution {event.execution_id!r} belongs to another team than "
        f"{event.team_id!r}; an execution's team never changes; the event was not stored",
    )


def ingest(
    session: Session, batch: list[Any], now: datetime, future_tolerance_s: int,
    max_age_days: int | None = DEFAULT_MAX_AGE_DAYS, *, commit: bool = False,
) -> IngestResult:
    """`max_age_days` None lifts the maximum age (a deliberate backfill by finance or admin).

    `commit`: the unit of work's COMMIT goes with the batch's last statements where they
    allow it (a batch with lifecycle events), saving a round trip; the caller's own commit
    then finds nothing left to do, so it must not write anything after this."""
    valid, errors = validate_batch(batch, now, future_tolerance_s, max_age_days)
    result = IngestResult(errors=errors)
    # Duplicates inside the batch are decided here; the store decides against the past.
    first: dict[tuple[str, str], SandboxEvent] = {}
    unique: list[SandboxEvent] = []
    for event in valid:
        seen = first.get(event.key)
        if seen is None:
            first[event.key] = event
            unique.append(event)
        elif seen.digest == event.digest:
            result.duplicates += 1
        else:
            result.errors.append(_conflict(event))
    unique, claims = _owned(unique, result)
    if not unique:
        return result
    horizon_ms = to_ms(now.replace(second=0, microsecond=0) - FOLD_SAFE_AGE)
    if any(e.kind == "host_stats" and e.time_ms < horizon_ms for e in unique):
        # Old samples are checked against folded minutes; the shared fold lock comes before
        # any row lock so that ingest and the fold always lock in the same order.
        repo.lock_fold_shared(session)
    teams.ensure_teams(session, [e.team_id for e in unique], now)
    samples = [e for e in unique if e.kind == "host_stats"]
    # One key order for every batch (see `_ingest_samples`).
    lifecycle = sorted((e for e in unique if e.kind != "host_stats"), key=lambda e: e.key)
    # The new executions' claims and the lifecycle events' first statements ride with the
    # samples' round trip.
    riders = _Riders(claims, _lifecycle_statements(lifecycle))
    _ingest_samples(session, samples, now, result, riders)
    riders.run_rest(session)
    _check_claims(session, claims, riders.owners)
    if lifecycle:
        _ingest_lifecycle(session, lifecycle, riders.lifecycle_rows, result, commit=commit)
    return result


class ClaimLost(RunAgain):
    """An execution this batch claimed belongs to another team (its row was made by another
    batch meanwhile); its events were stored as if it were this team's. Nothing of the unit
    of work may commit: run it again, knowing the owner (remembered already)."""


@dataclass
class _Claims:
    """New executions of the batch, each claimed by the team of its first event."""

    teams: dict[str, str]
    statements: Statements


@dataclass
class _Riders:
    """Statements that go with the batch's first write (`repo.store_new_samples`) or, when
    there is none or it fails, with the next round trip: the claims first (the lifecycle's
    lock needs their rows), then the lifecycle's. What they answered once run."""

    claims: _Claims | None
    lifecycle: Statements
    claims_ran: bool = False
    done: bool = False
    owners: dict[str, str] = field(default_factory=dict)
    lifecycle_rows: list[list[Any]] = field(default_factory=list)

    @property
    def statements(self) -> Statements:
        return [*(self.claims.statements if self.claims else ()), *self.lifecycle]

    def answered(self, rows: list[list[Any]], claim_statements: int = 2) -> None:
        """The rows of the claims' statements (the last of them the owners read) and the
        lifecycle's, run."""
        if self.claims is not None:
            self.owners = executions_repo.owners_of(rows[claim_statements - 1])
            rows = rows[claim_statements:]
        self.claims_ran = self.done = True
        self.lifecycle_rows = rows

    def ran_unanswered(self) -> None:
        """The claims ran (before a failure that skipped the rest) but their answer is lost."""
        self.claims_ran = True

    def run_rest(self, session: Session) -> None:
        if self.done or not self.statements:
            return
        if not self.claims_ran:
            self.answered(pipeline(session, self.statements))
            return
        # The claims' rows are made: only their owners are read again.
        owners = executions_repo.owners_statement(self.claims.teams) if self.claims else []
        self.answered(pipeline(session, [*owners, *self.lifecycle]), claim_statements=1)


def _owned(
    events: list[SandboxEvent], result: IngestResult
) -> tuple[list[SandboxEvent], _Claims | None]:
    """The events whose team owns their execution, and the claims of the executions first
    seen here: each is claimed by the team of its first event in the batch, and events
    naming another team for it are conflicts. The claims are made (and checked) with the
    batch's first write (`_Riders`, `_check_claims`), not in a round trip of their own."""
    claims: dict[str, SandboxEvent] = {}
    newest: dict[str, int] = {}
    kept: list[SandboxEvent] = []
    for e in events:
        owner = known.execution_owners.owner(e.execution_id)
        if owner is None:
            claim = claims.get(e.execution_id)
            if claim is None:
                claims[e.execution_id] = claim = e
            owner = claim.team_id
            if owner == e.team_id:
                # A new row's liveness starts at its newest event (samples keep it fresh).
                newest[e.execution_id] = max(newest.get(e.execution_id, e.time_ms), e.time_ms)
        if owner != e.team_id:
            result.errors.append(_foreign_team(e))
        else:
            kept.append(e)
    if not claims:
        return kept, None
    statements = executions_repo.claim_statements([
        ExecutionKey(c.execution_id, c.team_id, c.subject, from_ms(newest[c.execution_id]))
        for c in claims.values()])
    return kept, _Claims({x: c.team_id for x, c in claims.items()}, statements)


def _check_claims(session: Session, claims: _Claims | None, owners: dict[str, str]) -> None:
    """Every claim held (the execution is the claiming team's), remembered once committed;
    or the owners learnt and the unit of work run again (`ClaimLost`)."""
    if claims is None:
        return
    if claims.teams.keys() - owners.keys():
        raise RuntimeError("a claimed execution has no row after its claim")
    lost = {x: owners[x] for x, team in claims.teams.items() if owners[x] != team}
    if lost:
        # Made by another transaction, committed (the claim's insert waited for it).
        known.execution_owners.remember(lost)
        raise ClaimLost(f"{len(lost)} execution(s) of the batch belong to another team")
    known.execution_owners.remember_after_commit(session, claims.teams)


def _ingest_samples(
    session: Session, samples: list[SandboxEvent], now: datetime, result: IngestResult,
    riders: _Riders,
) -> None:
    """Store the samples; the `riders` go in the same round trip when the samples take the
    fast path (the usual batch)."""
    if not samples:
        return
    horizon_ms = to_ms(now.replace(second=0, microsecond=0) - FOLD_SAFE_AGE)
    old = [e for e in samples if e.time_ms < horizon_ms]
    to_insert = samples
    if old:  # the shared fold lock is already held (see `ingest`)
        folded = repo.folded_tags(session, old)
        if folded:
            to_insert = []
            for event in samples:
                stored = folded.get(event.index)
                if stored is None:
                    to_insert.append(event)
                elif stored == event.tag:
                    result.duplicates += 1
                else:
                    result.errors.append(_conflict(event))
    # One key order for every batch: two batches sharing keys (a retry racing its original)
    # then wait on each other instead of deadlocking.
    to_insert = sorted(to_insert, key=lambda e: e.key)
    if not to_insert:
        return
    before = riders.claims.statements if riders.claims else []
    reads = repo.store_new_samples(session, to_insert, before, riders.lifecycle)
    if reads is not None:
        riders.answered(reads)
        result.accepted += len(to_insert)
        return
    if before:
        riders.ran_unanswered()
    inserted = repo.insert_pending(session, to_insert)
    repo.log_liveness(session, _newest([e for e in to_insert if e.key in inserted]))
    result.accepted += len(inserted)
    missing = [e for e in to_insert if e.key not in inserted]
    if missing:
        stored_tags = repo.pending_tags(session, [(*e.key, e.time) for e in missing])
        for event in missing:
            stored_tag = stored_tags.get(event.key)
            if stored_tag is not None and stored_tag == event.tag:
                result.duplicates += 1
            elif stored_tag is not None and same_key(stored_tag, event.tag):
                result.errors.append(_conflict(event))
            else:  # vanished between insert and read: folded meanwhile; treat as duplicate
                result.duplicates += 1


def _newest(stored: list[SandboxEvent]) -> dict[str, int]:
    """The newest stored sample of each execution (ms), for the liveness pass."""
    newest: dict[str, int] = {}
    for event in stored:
        if event.time_ms > newest.get(event.execution_id, -1):
            newest[event.execution_id] = event.time_ms
    return newest


def _lifecycle_statements(events: list[SandboxEvent]) -> Statements:
    """Store the lifecycle events (their started sandboxes' leases consumed), then lock
    their executions and read every lifecycle event of them (`lock_statements`)."""
    if not events:
        return []
    return [repo.lifecycle_statement(events, utc_now()),
            *executions_repo.lock_statements({e.execution_id for e in events})]


def _ingest_lifecycle(
    session: Session, events: list[SandboxEvent], reads: list[list[Any]],
    result: IngestResult, *, commit: bool,
) -> None:
    inserted = repo.stored_keys(reads[0])
    result.accepted += len(inserted)
    missing = [e for e in events if e.key not in inserted]
    if missing:
        digests = repo.lifecycle_digests(session, [e.key for e in missing])
        for event in missing:
            if digests.get(event.key) == event.digest:
                result.duplicates += 1
            else:
                result.errors.append(_conflict(event))
    # Only executions with an event stored now are rebuilt; the others (duplicates) were
    # locked and read all the same, and their settled usage is put back as it was.
    stored = {e.execution_id for e in events if e.key in inserted}
    executions.recompute(session, stored, executions_repo.Locked.of(reads), commit=commit)
