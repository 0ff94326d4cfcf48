"""Every query of executions: locking, recomputation from lifecycle events, usage reads."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session

from metering.core.usage import Timeline
from metering.db import pipeline

Statements = list[tuple[TextClause, Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class ExecutionKey:
    execution_id: str
    team_id: str
    sandbox_id: str
    last_event_at: datetime


# Rows already there are left out by the snapshot first: the unique check of ON CONFLICT
# would otherwise wait for any transaction updating them (a liveness pass) to finish.
_ENSURE = text("""
INSERT INTO executions (execution_id, team_id, sandbox_id, last_event_at)
SELECT * FROM unnest(CAST(:execution_id AS text[]), CAST(:team_id AS text[]),
                     CAST(:sandbox_id AS text[]), CAST(:last_event_at AS timestamptz[]))
                 AS u(execution_id, team_id, sandbox_id, last_event_at)
WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.execution_id = u.execution_id)
ON CONFLICT (execution_id) DO NOTHING
""")

_LOCK = text("""
SELECT execution_id, team_id FROM executions WHERE execution_id = ANY(CAST(:ids AS text[]))
ORDER BY execution_id FOR UPDATE
""")

_EVENTS = text("""
SELECT execution_id, type, time, data, source, id
FROM lifecycle_events WHERE execution_id = ANY(CAST(:ids AS text[]))
""")

_UPDATE = text("""
UPDATE executions AS e SET
    start_at = u.start_at, start_kind = u.start_kind, vcpu = u.vcpu, memory_mib = u.memory_mib,
    disk_mib = u.disk_mib, template_id = u.template_id,
    end_at = u.end_at, end_kind = u.end_kind, end_reason = u.end_reason,
    inferred_end_at = NULL,
    last_event_at = greatest(e.last_event_at, u.last_event_at), updated_at = now()
FROM unnest(CAST(:execution_id AS text[]), CAST(:start_at AS timestamptz[]),
            CAST(:start_kind AS text[]), CAST(:vcpu AS int[]), CAST(:memory_mib AS int[]),
            CAST(:disk_mib AS int[]), CAST(:template_id AS text[]),
            CAST(:end_at AS timestamptz[]), CAST(:end_kind AS text[]),
            CAST(:end_reason AS text[]), CAST(:last_event_at AS timestamptz[]))
     AS u(execution_id, start_at, start_kind, vcpu, memory_mib, disk_mib, template_id,
          end_at, end_kind, end_reason, last_event_at)
WHERE e.execution_id = u.execution_id
""")

_DELETE_SEGMENTS = text(
    "DELETE FROM execution_segments WHERE execution_id = ANY(CAST(:ids AS text[]))"
)

_INSERT_SEGMENTS = text("""
INSERT INTO execution_segments (execution_id, seq, team_id, start_at, end_at, vcpu, memory_mib)
SELECT * FROM unnest(CAST(:execution_id AS text[]), CAST(:seq AS int[]),
                     CAST(:team_id AS text[]), CAST(:start_at AS timestamptz[]),
                     CAST(:end_at AS timestamptz[]), CAST(:vcpu AS int[]),
                     CAST(:memory_mib AS int[]))
""")


def _ensure_params(keys: Sequence[ExecutionKey]) -> dict[str, list[Any]]:
    ordered = sorted({k.execution_id: k for k in keys}.values(), key=lambda k: k.execution_id)
    return {
        "execution_id": [k.execution_id for k in ordered],
        "team_id": [k.team_id for k in ordered],
        "sandbox_id": [k.sandbox_id for k in ordered],
        "last_event_at": [k.last_event_at for k in ordered],
    }


_OWNERS = text("""
SELECT execution_id, team_id FROM executions WHERE execution_id = ANY(CAST(:ids AS text[]))
""")


def claim_statements(keys: Sequence[ExecutionKey]) -> Statements:
    """The statements that create missing execution rows (each key's team becomes its owner,
    for ever), then read execution id -> owning team for every key (`owners_of` its rows):
    to be pipelined in that order, so that a row another transaction created meanwhile (the
    insert waited for it) is seen by the read, which has a snapshot of its own."""
    return [(_ENSURE, _ensure_params(keys)),
            *owners_statement(k.execution_id for k in keys)]


def owners_statement(ids: Iterable[str]) -> Statements:
    """The statement that reads the owning team of each execution (`owners_of` its rows)."""
    return [(_OWNERS, {"ids": sorted(set(ids))})]


def owners_of(rows: Sequence[Any]) -> dict[str, str]:
    return {r[0]: r[1] for r in rows}


@dataclass(frozen=True, slots=True)
class Locked:
    """What `lock_statements` read: each locked execution's team (the first team it was
    seen with) and the lifecycle event rows of the executions asked for."""

    team_of: dict[str, str]
    events: list[tuple[Any, ...]]

    @classmethod
    def of(cls, results: Sequence[list[Any]]) -> Locked:
        """From the rows of `lock_statements`, the last three of `results`."""
        return cls({r[0]: r[1] for r in results[-3]}, [tuple(r) for r in results[-1]])


def lock_statements(ids: Collection[str]) -> Statements:
    """The statements that lock existing executions in id order (no deadlocks), take their
    settled usage out of the rollups (put back by `store_statements`) and read their
    lifecycle events, to be pipelined in that order (each sees what the ones before it did)
    after whatever created the rows; `Locked.of` reads their answers."""
    ordered = sorted(set(ids))
    return [(_LOCK, {"ids": ordered}), (_ROLLUP_DELTA, {"ids": ordered, "sign": -1}),
            (_EVENTS, {"ids": ordered})]


def lifecycle_rows(session: Session, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in session.execute(_EVENTS, {"ids": list(ids)})]


@dataclass(frozen=True, slots=True)
class Recomputed:
    execution_id: str
    team_id: str
    timeline: Timeline
    start_at: datetime | None
    end_at: datetime | None
    disk_mib: int | None
    template_id: str | None
    last_event_at: datetime
    segment_bounds: tuple[tuple[datetime, datetime | None], ...]


def store_statements(items: Sequence[Recomputed], locked: Sequence[str]) -> Statements:
    """The statements that write the recomputed executions and their segments and put the
    settled usage of every `locked` execution back into the rollups (`lock_statements` took
    it out), to be pipelined in that order."""
    if not locked:
        return []
    ids = [i.execution_id for i in items]
    statements: Statements = [] if not items else [(_UPDATE, {
        "execution_id": ids,
        "start_at": [i.start_at for i in items],
        "start_kind": [i.timeline.start_kind for i in items],
        "vcpu": [i.timeline.vcpu for i in items],
        "memory_mib": [i.timeline.memory_mib for i in items],
        "disk_mib": [i.disk_mib for i in items],
        "template_id": [i.template_id for i in items],
        "end_at": [i.end_at for i in items],
        "end_kind": [i.timeline.end_kind for i in items],
        "end_reason": [i.timeline.end_reason for i in items],
        "last_event_at": [i.last_event_at for i in items],
    }), (_DELETE_SEGMENTS, {"ids": ids})]
    seg_rows: dict[str, list[Any]] = {k: [] for k in (
        "execution_id", "seq", "team_id", "start_at", "end_at", "vcpu", "memory_mib")}
    for item in items:
        for seq, (segment, (start, end)) in enumerate(
            zip(item.timeline.segments, item.segment_bounds, strict=True)
        ):
            seg_rows["execution_id"].append(item.execution_id)
            seg_rows["seq"].append(seq)
            seg_rows["team_id"].append(item.team_id)
            seg_rows["start_at"].append(start)
            seg_rows["end_at"].append(end)
            seg_rows["vcpu"].append(segment.vcpu)
            seg_rows["memory_mib"].append(segment.memory_mib)
    if seg_rows["execution_id"]:
        statements.append((_INSERT_SEGMENTS, seg_rows))
    statements.append((_ROLLUP_DELTA, {"ids": list(locked), "sign": 1}))
    return statements


def store_recomputed(session: Session, items: Sequence[Recomputed], locked: Sequence[str], *,
                     commit: bool = False) -> None:
    """`store_statements` in one round trip (`commit`: with the unit of work's COMMIT)."""
    pipeline(session, store_statements(items, locked), commit=commit)


# The hourly contribution of settled executions, times :sign (+1 add, -1 subtract),
# appended: no row is shared with a concurrent batch (a team's current hour would be).
# Each id is looked up by key (the fences keep it so: without statistics, PostgreSQL chose to
# walk a team-ordered index, or hash all executions, and read every row to find a few).
_ROLLUP_DELTA = text("""
WITH seg AS MATERIALIZED (
    SELECT s.team_id, s.start_at, coalesce(s.end_at, e.inferred_end_at) AS seg_end,
           s.vcpu, s.memory_mib
    FROM unnest(CAST(:ids AS text[])) AS k(execution_id)
    CROSS JOIN LATERAL (SELECT end_at, inferred_end_at FROM executions
                        WHERE execution_id = k.execution_id OFFSET 0) e
    CROSS JOIN LATERAL (SELECT team_id, start_at, end_at, vcpu, memory_mib
                        FROM execution_segments
                        WHERE execution_id = k.execution_id OFFSET 0) s
    WHERE e.end_at IS NOT NULL OR e.inferred_end_at IS NOT NULL
)
INSERT INTO usage_rollup_deltas (team_id, hour, vcpu_ms, mib_ms)
SELECT s.team_id, h.hour,
       CAST(:sign * sum(s.vcpu * m.ms) AS bigint), CAST(:sign * sum(s.memory_mib * m.ms) AS bigint)
FROM seg s
CROSS JOIN LATERAL generate_series(date_trunc('hour', s.start_at),
                                   s.seg_end - interval '1 millisecond',
                                   interval '1 hour') AS h(hour)
CROSS JOIN LATERAL (SELECT CAST(extract(epoch FROM least(s.seg_end, h.hour + interval '1 hour')
                                        - greatest(s.start_at, h.hour)) * 1000 AS bigint) AS ms) m
WHERE s.seg_end > s.start_at
GROUP BY s.team_id, h.hour
""")

# Moves every committed delta into the rollups in one statement (so a reader, in one
# snapshot, sees each delta either still appended or already folded, never both or neither).
# Rows are written in key order, so two workers folding at once wait instead of deadlocking.
_FOLD_ROLLUP_DELTAS = text("""
WITH moved AS (
    DELETE FROM usage_rollup_deltas RETURNING team_id, hour, vcpu_ms, mib_ms
), upserted AS (
    INSERT INTO usage_rollups AS r (team_id, hour, vcpu_ms, mib_ms)
    SELECT team_id, hour, sum(vcpu_ms), sum(mib_ms) FROM moved
    GROUP BY team_id, hour
    HAVING sum(vcpu_ms) <> 0 OR sum(mib_ms) <> 0
    ORDER BY team_id, hour
    ON CONFLICT (team_id, hour) DO UPDATE SET
        vcpu_ms = r.vcpu_ms + excluded.vcpu_ms, mib_ms = r.mib_ms + excluded.mib_ms
)
SELECT count(*) FROM moved
""")

_SETTLE = text("""
WITH due AS (
    SELECT execution_id FROM executions
    WHERE end_at IS NULL AND inferred_end_at IS NULL
      AND last_event_at <= CAST(:now AS timestamptz) - CAST(:stale AS interval)
    ORDER BY execution_id LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE executions e SET inferred_end_at = e.last_event_at, updated_at = now()
FROM due WHERE e.execution_id = due.execution_id
RETURNING e.execution_id
""")

_REOPEN_CANDIDATES = text("""
SELECT e.execution_id FROM executions e
JOIN unnest(CAST(:ids AS text[]), CAST(:newest AS timestamptz[])) AS n(execution_id, newest)
  ON n.execution_id = e.execution_id
WHERE e.inferred_end_at IS NOT NULL AND n.newest > e.inferred_end_at
ORDER BY e.execution_id
FOR UPDATE OF e
""")

_REOPEN = text("""
UPDATE executions SET inferred_end_at = NULL, updated_at = now()
WHERE execution_id = ANY(CAST(:ids AS text[]))
""")


def apply_rollup_delta(session: Session, ids: Sequence[str], sign: int) -> None:
    """Add (+1) or subtract (-1) the settled usage of these (locked) executions."""
    if ids:
        session.execute(_ROLLUP_DELTA, {"ids": list(ids), "sign": sign})


def fold_rollup_deltas(session: Session) -> int:
    """Fold the appended deltas into `usage_rollups`; answers how many were folded."""
    return int(session.execute(_FOLD_ROLLUP_DELTAS).scalar_one())


def settle_stale(session: Session, now: datetime, stale_after: Any, limit: int) -> list[str]:
    """Give stale executions without a true end their inferred end, and roll them up."""
    ids = [r[0] for r in session.execute(
        _SETTLE, {"now": now, "stale": stale_after, "limit": limit})]
    apply_rollup_delta(session, ids, +1)
    return ids


def reopen_if_newer(session: Session, newest: dict[str, datetime]) -> list[str]:
    """Executions settled at an inferred end that now have a newer event are open again."""
    if not newest:
        return []
    ids = sorted(newest)
    reopened = [r[0] for r in session.execute(
        _REOPEN_CANDIDATES, {"ids": ids, "newest": [newest[i] for i in ids]})]
    if reopened:
        apply_rollup_delta(session, reopened, -1)
        session.execute(_REOPEN, {"ids": reopened})
    return reopened
