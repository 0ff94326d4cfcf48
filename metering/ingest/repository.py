"""Every query of ingest: batch inserts with ON CONFLICT, and the minute fold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import TextClause, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from metering.core.clock import month_start
from metering.core.events import SandboxEvent
from metering.db import pipeline
from metering.executions.repository import reopen_if_newer
from metering.ingest.slices import slice_name

# Held shared by ingest of old samples and exclusively by the fold, so a sample can never be
# checked against a minute row while the fold is moving that minute out of the pending table.
FOLD_LOCK = 0x6D657472  # "metr"
UNIQUE_VIOLATION = "23505"
# What PostgreSQL raises for a row of a month without a partition (check_violation).
NO_PARTITION = "23514"
# The horizon when nothing was ever dropped: before any representable sample time.
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)

_INSERT_PENDING_SQL = """
INSERT INTO host_stats_pending (source, id, execution_id, time, cpu_centipct, memory_used_mib, tag)
SELECT s, i, x, timestamptz 'epoch' + ms * interval '1 millisecond', c, m, g
FROM json_to_recordset(CAST(:rows AS json))
    AS u(s text, i text, x text, ms bigint, c int, m int, g bigint)
"""
_SAVEPOINT = "SAVEPOINT new_samples"
_RELEASE = "RELEASE SAVEPOINT new_samples"
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT new_samples"
_INSERT_PENDING = text(_INSERT_PENDING_SQL + """
ON CONFLICT (source, id, time) DO NOTHING
RETURNING source, id
""")

# With the time, each key is looked up in its own minute slice only.
_PENDING_TAGS = text("""
SELECT p.source, p.id, p.tag
FROM host_stats_pending p
JOIN unnest(CAST(:source AS text[]), CAST(:id AS text[]), CAST(:time AS timestamptz[]))
     AS k(source, id, time)
  ON p.source = k.source AND p.id = k.id AND p.time = k.time
""")

_FOLDED_TAGS = text("""
SELECT k.idx, t.tag
FROM unnest(CAST(:idx AS int[]), CAST(:execution_id AS text[]),
            CAST(:minute AS timestamptz[]), CAST(:tag AS bigint[]))
     AS k(idx, execution_id, minute, tag)
JOIN sample_minutes m ON m.execution_id = k.execution_id AND m.minute = k.minute
CROSS JOIN LATERAL unnest(m.tags) AS t(tag)
WHERE (t.tag >> 16) = (k.tag >> 16)
""")

# The lifecycle events with the leases they end, in one statement: a started sandbox (its
# created or resumed event stored now, not a duplicate) no longer needs the slot its lease
# held, it counts as running. Answers the keys stored.
_INSERT_LIFECYCLE_CONSUMING = text("""
WITH stored AS (
    INSERT INTO lifecycle_events
        (source, id, type, subject, team_id, execution_id, time, data, digest)
    SELECT * FROM unnest(
        CAST(:source AS text[]), CAST(:id AS text[]), CAST(:type AS text[]),
        CAST(:subject AS text[]), CAST(:team_id AS text[]), CAST(:execution_id AS text[]),
        CAST(:time AS timestamptz[]), CAST(:data AS jsonb[]), CAST(:digest AS bytea[]))
    ON CONFLICT (source, id) DO NOTHING
    RETURNING source, id, type, subject
), consumed AS (
    UPDATE leases SET consumed_at = CAST(:now AS timestamptz)
    WHERE sandbox_id IN (SELECT subject FROM stored
                         WHERE type IN ('sandbox.lifecycle.created',
                                        'sandbox.lifecycle.resumed'))
      AND consumed_at IS NULL
)
SELECT source, id FROM stored
""")

_LIFECYCLE_DIGESTS = text("""
SELECT e.source, e.id, e.digest
FROM lifecycle_events e
JOIN unnest(CAST(:source AS text[]), CAST(:id AS text[])) AS k(source, id)
  ON e.source = k.source AND e.id = k.id
""")

# A minute row gathers what every fold adds to it (late samples come after their minute).
_UPSERT_MINUTES = """\
ON CONFLICT (execution_id, minute) DO UPDATE SET
        samples = m.samples + excluded.samples,
        cpu_samples = m.cpu_samples + excluded.cpu_samples,
        cpu_sum = m.cpu_sum + excluded.cpu_sum,
        cpu_max = greatest(m.cpu_max, excluded.cpu_max),
        mem_samples = m.mem_samples + excluded.mem_samples,
        mem_sum = m.mem_sum + excluded.mem_sum,
        mem_max = greatest(m.mem_max, excluded.mem_max),
        last_at = greatest(m.last_at, excluded.last_at),
        tags = m.tags || excluded.tags"""

# One statement moves a batch: delete from the pending table, aggregate per execution-minute,
# upsert. Rows go only into months that have a partition (`:partitions`, the caller's
# knowledge) and are after the retention horizon (`:kept_from`); samples before the horizon
# are deleted and counted as discarded. A sample of any other month would make PostgreSQL
# fail the whole statement, so it is answered instead, with its month: the caller rolls the
# batch back, makes the partitions and folds again. The checks cost two comparisons per
# sample on the pass the count already makes; the month is computed only for rows outside.
_FOLD_SQL = """
WITH moved AS ({moved}), agg AS (
    SELECT execution_id, date_trunc('minute', time) AS minute,
           count(*) AS samples,
           count(cpu_centipct) AS cpu_samples, coalesce(sum(cpu_centipct), 0) AS cpu_sum,
           max(cpu_centipct) AS cpu_max,
           count(memory_used_mib) AS mem_samples, coalesce(sum(memory_used_mib), 0) AS mem_sum,
           max(memory_used_mib) AS mem_max,
           max(time) AS last_at, array_agg(tag) AS tags
    FROM moved GROUP BY 1, 2
), upserted AS (
    INSERT INTO sample_minutes AS m
        (execution_id, minute, team_id, sandbox_id, samples, cpu_samples, cpu_sum, cpu_max,
         mem_samples, mem_sum, mem_max, last_at, tags)
    SELECT agg.execution_id, minute, e.team_id, e.sandbox_id, samples, cpu_samples, cpu_sum,
           cpu_max, mem_samples, mem_sum, mem_max, last_at, tags
    FROM agg JOIN executions e ON e.execution_id = agg.execution_id
    -- On last_at, in the same minute as `minute`: an aggregate, so the check runs once per
    -- row made rather than being pushed down to every sample.
    WHERE agg.last_at >= :kept_from AND agg.last_at <@ CAST(:partitions AS tstzmultirange)
    {upsert}
)
SELECT count(*), count(*) FILTER (WHERE time < :kept_from),
       array_agg(DISTINCT date_trunc('month', time, 'UTC')) FILTER (
           WHERE time >= :kept_from AND NOT time <@ CAST(:partitions AS tstzmultirange))
FROM moved
"""
# The default partition (samples outside every minute slice: late ones, or any before the
# slices were made) is emptied row by row, oldest-first batches under the watermark.
_FOLD_DEFAULT = text(_FOLD_SQL.format(upsert=_UPSERT_MINUTES, moved="""
    DELETE FROM host_stats_pending_default
    WHERE (source, id, time) IN (
        SELECT source, id, time FROM host_stats_pending_default
        WHERE time < :watermark LIMIT :limit)
    RETURNING execution_id, time, cpu_centipct, memory_used_mib, tag"""))

# A whole minute slice: every sample is of one minute (`:minute`) and one month, so the
# horizon and partition checks are the caller's, once, and the samples are grouped by
# execution alone, hashed rather than sorted (the tags of a minute row are a set: nothing
# reads their order). Measured on a slice of 1.86 million samples of 31,000 executions:
# 1.0 s against 3.9 s for the general statement, which sorts every sample (spilling to disk)
# and checks each one's month.
_FOLD_SLICE_SQL = """
WITH agg AS (
    SELECT execution_id, count(*) AS samples,
           count(cpu_centipct) AS cpu_samples, coalesce(sum(cpu_centipct), 0) AS cpu_sum,
           max(cpu_centipct) AS cpu_max,
           count(memory_used_mib) AS mem_samples, coalesce(sum(memory_used_mib), 0) AS mem_sum,
           max(memory_used_mib) AS mem_max,
           max(time) AS last_at, array_agg(tag) AS tags
    FROM "{name}"{part} GROUP BY execution_id
), upserted AS (
    INSERT INTO sample_minutes AS m
        (execution_id, minute, team_id, sandbox_id, samples, cpu_samples, cpu_sum, cpu_max,
         mem_samples, mem_sum, mem_max, last_at, tags)
    SELECT agg.execution_id, :minute, e.team_id, e.sandbox_id, samples, cpu_samples, cpu_sum,
           cpu_max, mem_samples, mem_sum, mem_max, last_at, tags
    FROM agg JOIN executions e ON e.execution_id = agg.execution_id
    {upsert}
)
SELECT coalesce(sum(samples), 0) FROM agg
"""
# The grouping's memory for the fold's transaction only: about 1.7 kB an execution (50 MB
# at 31,000 running); beyond it PostgreSQL spills to disk, slower but the same answer.
FOLD_WORK_MEM = "128MB"
# A slice of a month before the horizon: its samples are counted, then emptied with it.
_COUNT_SLICE = 'SELECT count(*) FROM "{name}"{part}'
# Whether a slice holds anything (an empty one needs no partition for its month).
_ANY_IN_SLICE = 'SELECT 1 FROM "{name}"{part} LIMIT 1'
# One of `parts` parts of a slice, by a hash of the execution: every sample of an execution
# is in one part, so each part's minute rows are whole and no two parts write the same row.
_SLICE_PART = " WHERE hashtext(execution_id) & {mask} = {part}"


def _slice_part(part: int, parts: int) -> str:
    if parts == 1:
        return ""
    if parts < 1 or parts & (parts - 1) or not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}: parts must be a power of two, and the "
                         "part one of 0 to parts - 1")
    return _SLICE_PART.format(mask=parts - 1, part=part)

# The liveness log's rows are per bucket of executions (a hash of the id): a pass drains,
# writes and commits one bucket at a time, so the row locks it holds while writing are a
# bucket's, and an ingest batch locking an execution (a lifecycle event) waits at most for
# those. Every execution is always in the same bucket, so a pass still reads each one once.
LIVENESS_BUCKETS = 8

# One JSON parameter (see `_sample_rows`), one row per bucket a batch touches.
_LOG_LIVENESS = text(f"""
INSERT INTO liveness_log (bucket, execution_ids, newest)
SELECT hashtext(x) & {LIVENESS_BUCKETS - 1}, array_agg(x),
       array_agg(timestamptz 'epoch' + ms * interval '1 millisecond')
FROM json_to_recordset(CAST(:rows AS json)) AS u(x text, ms bigint)
GROUP BY 1
""")

# Most batches hold nothing seen before: a plain insert costs about half of ON CONFLICT's
# speculative insertion. When it hits a key already stored, the savepoint is rolled back
# and the batch goes through the exact path instead. The batch's liveness rows (see
# `_LOG_LIVENESS`) come from the same parsed rows, in the same statement: the samples'
# document is read once, and nothing is sent twice.
_INSERT_PENDING_FAST = text(f"""
WITH u AS MATERIALIZED (
    SELECT s, i, x, timestamptz 'epoch' + ms * interval '1 millisecond' AS t, c, m, g
    FROM json_to_recordset(CAST(:rows AS json))
        AS u(s text, i text, x text, ms bigint, c int, m int, g bigint)
), stored AS (
    INSERT INTO host_stats_pending
        (source, id, execution_id, time, cpu_centipct, memory_used_mib, tag)
    SELECT s, i, x, t, c, m, g FROM u
)
INSERT INTO liveness_log (bucket, execution_ids, newest)
SELECT hashtext(x) & {LIVENESS_BUCKETS - 1}, array_agg(x), array_agg(t)
FROM (SELECT x, max(t) AS t FROM u GROUP BY x) AS n
GROUP BY 1
""")

# The buckets with something to drain (any bucket ever written, whatever `LIVENESS_BUCKETS`
# was then: nothing is left behind by a change of it).
_LIVENESS_BUCKETS_PENDING = text("SELECT DISTINCT bucket FROM liveness_log ORDER BY bucket")

# One statement, one round trip: drain a chunk of one bucket of the log (oldest first; its
# entries locked in seq order first, so two passes draining at once, the liveness job's and
# the settle's, wait for each other instead of deadlocking on the entries they delete), take each
# execution's newest time and whether it came only from entries a pass put back (nothing new
# arrived for it since), write what must be written, put back the rest. Rows are locked in
# id order (the order ingest and the sweeps use), so a pass and an ingest wait for each other
# instead of deadlocking. Answers the counts and the settled executions to reopen.
_LIVENESS = text("""
WITH drained AS (
    DELETE FROM liveness_log
    WHERE seq IN (SELECT seq FROM liveness_log WHERE bucket = :bucket
                  ORDER BY seq LIMIT :limit FOR UPDATE)
    RETURNING carried, execution_ids, newest
), n AS (
    SELECT u.execution_id, max(u.newest) AS newest, bool_and(d.carried) AS quiet
    FROM drained d
    CROSS JOIN LATERAL unnest(d.execution_ids, d.newest) AS u(execution_id, newest)
    GROUP BY u.execution_id
), seen AS (
    -- Each execution read once (its row as of the statement's start): the write's candidates,
    -- what is put back and what is reopened are all picked from here.
    SELECT n.execution_id, n.newest, n.quiet, e.last_event_at, e.inferred_end_at
    FROM n JOIN executions e USING (execution_id)
), candidate AS (
    SELECT execution_id, newest, quiet FROM seen
    WHERE last_event_at < newest
      AND (:exact OR quiet OR newest >= last_event_at + CAST(:step AS interval)
           OR last_event_at <= CAST(:near_stale AS timestamptz))
), locked AS (
    -- Only the candidates are locked, and checked again on their newest row version: a
    -- concurrent write only moves `last_event_at` forward, so it can drop a candidate, never
    -- add one.
    SELECT e.execution_id, c.newest FROM executions e JOIN candidate c USING (execution_id)
    WHERE e.last_event_at < c.newest
      AND (:exact OR c.quiet OR c.newest >= e.last_event_at + CAST(:step AS interval)
           OR e.last_event_at <= CAST(:near_stale AS timestamptz))
    ORDER BY e.execution_id
    FOR UPDATE OF e
), updated AS (
    UPDATE executions AS e SET last_event_at = locked.newest
    FROM locked WHERE e.execution_id = locked.execution_id
    RETURNING e.execution_id
), carry AS (
    SELECT s.execution_id, s.newest FROM seen s
    WHERE s.last_event_at < s.newest
      AND NOT EXISTS (SELECT 1 FROM updated u WHERE u.execution_id = s.execution_id)
), put_back AS (
    INSERT INTO liveness_log (carried, bucket, execution_ids, newest)
    SELECT true, :bucket, array_agg(execution_id ORDER BY execution_id),
           array_agg(newest ORDER BY execution_id)
    FROM carry HAVING count(*) > 0
), reopen AS (
    SELECT execution_id, newest FROM seen
    WHERE inferred_end_at IS NOT NULL AND newest > inferred_end_at
)
SELECT (SELECT count(*) FROM drained), (SELECT count(*) FROM updated),
       (SELECT count(*) FROM carry),
       (SELECT array_agg(execution_id ORDER BY execution_id) FROM reopen),
       (SELECT array_agg(newest ORDER BY execution_id) FROM reopen)
""")

# A whole bucket in one chunk when it is as usual (a row per batch since the last pass).
LIVENESS_CHUNK = 500


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _sample_rows(events: Sequence[SandboxEvent]) -> str:
    # One JSON parameter: psycopg dumps Python lists into arrays element by element, which
    # costs more than PostgreSQL parsing a JSON document orjson writes in C.
    return orjson.dumps([{
        "s": e.source, "i": e.id, "x": e.execution_id, "ms": e.time_ms,
        "c": e.cpu_centipct, "m": e.memory_used_mib, "g": e.tag,
    } for e in events]).decode()


def _liveness_rows(newest_ms: dict[str, int]) -> str:
    return orjson.dumps([{"x": x, "ms": ms} for x, ms in newest_ms.items()]).decode()


def store_new_samples(
    session: Session, events: Sequence[SandboxEvent],
    before: Sequence[tuple[TextClause, Mapping[str, Any]]] = (),
    then: Sequence[tuple[TextClause, Mapping[str, Any]]] = (),
) -> list[list[Any]] | None:
    """Store samples none of which was stored before (the usual batch), with the batch's
    liveness rows (as `log_liveness` writes them, from the same statement), in one round
    trip: savepoint, plain insert and release are pipelined (`metering.db.pipeline`), with
    the statements `before` ahead of them and `then` after them. Answers the rows of
    `before`'s and `then`'s statements, in order. None when a key was stored before: nothing
    of the samples stayed (the savepoint is rolled back), `before` ran (its rows are lost),
    `then` did not, and the caller takes the exact path (`insert_pending`)."""
    statements: list[tuple[TextClause | str, Mapping[str, Any]]] = [
        *before, (_SAVEPOINT, {}), (_INSERT_PENDING_FAST, {"rows": _sample_rows(events)}),
        (_RELEASE, {}), *then]
    try:
        # What follows the insert is skipped when it fails: never prepared (see `pipeline`).
        results = pipeline(session, statements, may_fail_at=len(before) + 1)
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION:
            raise
        session.execute(text(_ROLLBACK_TO))
        return None
    return results[:len(before)] + results[len(before) + 3:]


def insert_pending(session: Session, events: Sequence[SandboxEvent]) -> set[tuple[str, str]]:
    """Insert samples, skipping keys stored before; answer the keys that were new."""
    if not events:
        return set()
    rows = session.execute(_INSERT_PENDING, {"rows": _sample_rows(events)})
    return {(r[0], r[1]) for r in rows}


def pending_tags(
    session: Session, keys: Sequence[tuple[str, str, datetime]],
) -> dict[tuple[str, str], int]:
    """Stored tags of pending samples by (source, id, time)."""
    if not keys:
        return {}
    rows = session.execute(_PENDING_TAGS, {
        "source": [k[0] for k in keys], "id": [k[1] for k in keys],
        "time": [k[2] for k in keys]})
    return {(r[0], r[1]): int(r[2]) for r in rows}


def lock_fold_shared(session: Session) -> None:
    session.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": FOLD_LOCK})


def folded_tags(session: Session, events: Sequence[SandboxEvent]) -> dict[int, int]:
    """For samples whose minute may be folded: index -> the stored tag with the same key."""
    if not events:
        return {}
    rows = session.execute(_FOLDED_TAGS, {
        "idx": [e.index for e in events],
        "execution_id": [e.execution_id for e in events],
        "minute": [minute_of(e.time) for e in events],
        "tag": [e.tag for e in events],
    })
    return {int(r[0]): int(r[1]) for r in rows}


def lifecycle_statement(
    events: Sequence[SandboxEvent], now: datetime,
) -> tuple[TextClause, dict[str, Any]]:
    """The statement that stores lifecycle events (skipping keys stored before) and consumes
    the leases of the sandboxes they start; `stored_keys` reads its answer."""
    return _INSERT_LIFECYCLE_CONSUMING, {
        "source": [e.source for e in events],
        "id": [e.id for e in events],
        "type": [e.type for e in events],
        "subject": [e.subject for e in events],
        "team_id": [e.team_id for e in events],
        "execution_id": [e.execution_id for e in events],
        "time": [e.time for e in events],
        "data": [orjson.dumps(e.data).decode() for e in events],
        "digest": [e.digest for e in events],
        "now": now,
    }


def stored_keys(rows: Sequence[Any]) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in rows}


def lifecycle_digests(
    session: Session, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], bytes]:
    if not keys:
        return {}
    rows = session.execute(_LIFECYCLE_DIGESTS, {
        "source": [k[0] for k in keys], "id": [k[1] for k in keys]})
    return {(r[0], r[1]): bytes(r[2]) for r in rows}


@dataclass(frozen=True, slots=True)
class FoldBatch:
    """One fold statement: `moved` samples left the pending table, `discarded` of them for
    months before the retention horizon. With `missing` months (no partition) or
    `partitions_stale` (PostgreSQL found no partition where the caller thought there was
    one), nothing happened: the batch was rolled back."""

    moved: int
    discarded: int
    missing: tuple[datetime, ...] = ()
    partitions_stale: bool = False


def lock_fold(session: Session) -> None:
    """One fold (or horizon move) at a time; ingest of old samples waits (shared lock)."""
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": FOLD_LOCK})


def fold(
    session: Session, watermark: datetime, limit: int, *, kept_from: datetime | None,
    partitions: str,
) -> FoldBatch:
    """Move up to `limit` pending samples older than the watermark from the default partition
    (deleted) into minute rows of the months in `partitions` (a `tstzmultirange`), discarding
    those before `kept_from`. The caller holds the fold lock (`lock_fold`)."""
    params = {"watermark": watermark, "limit": limit, "partitions": partitions,
              "kept_from": kept_from or EARLIEST}
    savepoint = session.begin_nested()
    try:
        row = session.execute(_FOLD_DEFAULT, params).one()
    except IntegrityError as exc:
        savepoint.rollback()
        if getattr(exc.orig, "sqlstate", None) == NO_PARTITION:
            return FoldBatch(0, 0, partitions_stale=True)
        raise
    if row[2]:
        savepoint.rollback()
        return FoldBatch(0, 0, missing=tuple(sorted(row[2])))
    savepoint.commit()
    return FoldBatch(int(row[0]), int(row[1]))


def fold_slice(
    session: Session, minute: datetime, *, kept_from: datetime | None,
    months: frozenset[datetime] | set[datetime], part: int = 0, parts: int = 1,
) -> FoldBatch:
    """Move every sample of the minute slice of `minute` (of its part `part` of `parts`, a
    power of two, by a hash of the execution) into minute rows; its samples are discarded
    when its month is before `kept_from`, and `missing` names its month when `months` (the
    months with a partition) lacks it. The caller holds the fold lock and the slice SHARE
    locked (no writer), folds every part, and empties the slice after, all in the same
    transaction."""
    name = slice_name(minute)
    month = month_start(minute)
    where = _slice_part(part, parts)
    if kept_from is not None and month < kept_from:
        count = session.execute(text(_COUNT_SLICE.format(name=name, part=where))).scalar_one()
        return FoldBatch(int(count), int(count))
    if month not in months:
        if session.execute(text(_ANY_IN_SLICE.format(name=name, part=where))).first() is None:
            return FoldBatch(0, 0)
        return FoldBatch(0, 0, missing=(month,))
    session.execute(text("SELECT set_config('work_mem', :m, true)"), {"m": FOLD_WORK_MEM})
    statement = text(_FOLD_SLICE_SQL.format(name=name, part=where, upsert=_UPSERT_MINUTES))
    savepoint = session.begin_nested()
    try:
        moved = session.execute(statement, {"minute": minute}).scalar_one()
    except IntegrityError as exc:
        savepoint.rollback()
        if getattr(exc.orig, "sqlstate", None) == NO_PARTITION:
            return FoldBatch(0, 0, partitions_stale=True)
        raise
    savepoint.commit()
    return FoldBatch(int(moved), 0)


def log_liveness(session: Session, newest_ms: dict[str, int]) -> None:
    """Record a batch's newest sample time (ms) per execution for the liveness pass: a row
    per bucket per batch, so a sample costs the pass nothing until it is read, and the pass
    reads only what arrived since it last ran."""
    if newest_ms:
        session.execute(_LOG_LIVENESS, {"rows": _liveness_rows(newest_ms)})


@dataclass(frozen=True, slots=True)
class LivenessPass:
    drained: int  # log rows read
    written: int  # executions whose `last_event_at` moved
    carried: int  # executions put back for a later pass


def liveness_buckets(session: Session) -> list[int]:
    """The buckets of the liveness log that hold entries, in order."""
    return [int(r[0]) for r in session.execute(_LIVENESS_BUCKETS_PENDING)]


def refresh_liveness(
    session: Session, now: datetime, stale_after: timedelta, step: timedelta | None,
    limit: int = LIVENESS_CHUNK, bucket: int = 0,
) -> LivenessPass:
    """Carry the newest sample of each execution of `bucket` logged since the last pass into
    `executions.last_event_at` (newer wins), reopening executions that had been settled at
    an older inferred end. One chunk of the bucket; `drained < limit` means it is empty now.

    `step` None writes every newest time. Otherwise an execution that is still sending is
    written only once its newest is `step` past what is stored (its figures do not depend on
    it: it is running), and put back in the log until then; one that sent nothing new since
    the last pass, or whose stored time is within `step` of going stale, is written exactly.
    So `last_event_at` is exact for every execution that went quiet a pass ago."""
    margin = step if step is not None else timedelta(0)
    drained, written, carried, reopen_ids, reopen_newest = session.execute(_LIVENESS, {
        "limit": limit, "exact": step is None, "step": margin, "bucket": bucket,
        "near_stale": now - stale_after + 2 * margin,
    }).one()
    if reopen_ids:
        # Already locked by the statement (a settled execution is always written).
        reopen_if_newer(session, dict(zip(reopen_ids, reopen_newest, strict=True)))
    return LivenessPass(int(drained), int(written), int(carried))
