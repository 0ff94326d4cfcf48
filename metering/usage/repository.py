"""Every read of usage: integer usage per bucket, per execution and per team, computed in
PostgreSQL, and the SQL predicates of "open", "fresh" and "a segment's billed end" that any
other query of running executions must use.

All times are whole milliseconds, so the database's exact numeric interval arithmetic gives
the same integers the pure core would. Open executions end "now" while fresh, or at their
newest event once stale: the same rule as `metering.core.usage.effective_end`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from metering.db import pipeline

# The billed end of a segment, with the running/stale rule (`e` executions, `s` segments;
# binds :now and :stale).
SEGMENT_END = """
    CASE WHEN s.end_at IS NOT NULL THEN s.end_at
         WHEN e.inferred_end_at IS NOT NULL THEN e.inferred_end_at
         WHEN e.last_event_at > CAST(:now AS timestamptz) - CAST(:stale AS interval)
              THEN CAST(:now AS timestamptz)
         ELSE greatest(e.last_event_at, s.start_at) END
"""

# An execution with no end yet, true or inferred.
OPEN = "e.end_at IS NULL AND e.inferred_end_at IS NULL"


def running(now: str = ":now", stale: str = ":stale") -> str:
    """SQL: execution `e` runs at `now` (open, and its newest event younger than `stale`).
    The bind names are the caller's: psycopg's pipelined statements pass `%(now)s`."""
    return (f"{OPEN} AND e.last_event_at > CAST({now} AS timestamptz) "
            f"- CAST({stale} AS interval)")


RUNNING = running()


def is_running(end_at: datetime | None, last_event_at: datetime, now: datetime,
               stale_after: timedelta) -> bool:
    """`running()` for a row already read (an inferred end only comes after staleness)."""
    return end_at is None and now - last_event_at < stale_after

_BUCKETED_SQL = """
WITH seg AS (
    SELECT s.vcpu, s.memory_mib,
           greatest(s.start_at, CAST(:start AS timestamptz)) AS lo,
           least({segment_end}, CAST(:end AS timestamptz)) AS hi
    FROM {source}
    WHERE s.start_at < :end AND (s.end_at IS NULL OR s.end_at > :start)
), piece AS (
    SELECT i, seg.vcpu, seg.memory_mib,
           CAST(extract(epoch FROM least(seg.hi, b.bounds[i + 1])
                                  - greatest(seg.lo, b.bounds[i])) * 1000 AS bigint) AS ms
    FROM seg
    CROSS JOIN (SELECT CAST(:bounds AS timestamptz[]) AS bounds) b
    CROSS JOIN LATERAL generate_series(
        width_bucket(seg.lo, b.bounds),
        width_bucket(seg.hi - interval '1 millisecond', b.bounds)) AS i
    WHERE seg.hi > seg.lo
)
SELECT i, CAST(sum(vcpu * ms) AS bigint), CAST(sum(memory_mib * ms) AS bigint)
FROM piece GROUP BY i ORDER BY i
"""

# Open executions of a team (few: at most its concurrency) through the partial index.
_BUCKETED_OPEN = text(_BUCKETED_SQL.format(segment_end=SEGMENT_END, source=f"""
    executions e JOIN execution_segments s ON s.execution_id = e.execution_id
    WHERE e.team_id = :team_id AND {OPEN} AND""").replace("WHERE s.start_at", "s.start_at"))

# Settled executions, only for the partial hours the rollups cannot split. Two branches so
# that each walks an index over the hour alone: closed segments by (team, end), and the open
# last segment of executions that ended at an inferred end by (team, inferred end).
_BUCKETED_SETTLED = text("""
WITH seg AS (
    SELECT s.vcpu, s.memory_mib, greatest(s.start_at, CAST(:start AS timestamptz)) AS lo,
           least(s.end_at, CAST(:end AS timestamptz)) AS hi
    FROM execution_segments s JOIN executions e ON e.execution_id = s.execution_id
    WHERE s.team_id = :team_id AND s.end_at > :start AND s.start_at < :end
      AND (e.end_at IS NOT NULL OR e.inferred_end_at IS NOT NULL)
    UNION ALL
    -- Driven by the team's inferred ends after :start, each execution's open segment looked
    -- up by key (fenced: without statistics PostgreSQL scanned every open segment instead).
    SELECT s.vcpu, s.memory_mib, greatest(s.start_at, CAST(:start AS timestamptz)),
           least(e.inferred_end_at, CAST(:end AS timestamptz))
    FROM (SELECT execution_id, inferred_end_at FROM executions
          WHERE team_id = :team_id AND inferred_end_at > :start OFFSET 0) e
    CROSS JOIN LATERAL (SELECT start_at, vcpu, memory_mib FROM execution_segments
                        WHERE execution_id = e.execution_id AND end_at IS NULL OFFSET 0) s
    WHERE s.start_at < :end
), piece""" + _BUCKETED_SQL.split("), piece", 1)[1])

# Settled usage per team and hour: the rollups and the deltas not folded into them yet, in
# one statement (one snapshot: a delta being folded is counted once).
ROLLUPS = """(SELECT team_id, hour, vcpu_ms, mib_ms FROM usage_rollups
 UNION ALL SELECT team_id, hour, vcpu_ms, mib_ms FROM usage_rollup_deltas)"""

_ROLLUPS = text(f"""
SELECT width_bucket(hour, CAST(:bounds AS timestamptz[])) AS i,
       CAST(sum(vcpu_ms) AS bigint), CAST(sum(mib_ms) AS bigint)
FROM {ROLLUPS} r
WHERE team_id = :team_id AND hour >= :start AND hour < :end
  AND NOT (hour = ANY(CAST(:partial AS timestamptz[])))
GROUP BY i
""")

_PER_EXECUTION = text(f"""
SELECT s.execution_id,
       CAST(sum(s.vcpu * extract(epoch FROM (hi - lo)) * 1000) AS bigint),
       CAST(sum(s.memory_mib * extract(epoch FROM (hi - lo)) * 1000) AS bigint)
FROM execution_segments s JOIN executions e ON e.execution_id = s.execution_id
CROSS JOIN LATERAL (SELECT greatest(s.start_at, CAST(:start AS timestamptz)) AS lo,
                           least({SEGMENT_END}, CAST(:end AS timestamptz)) AS hi) w
WHERE s.execution_id = ANY(CAST(:ids AS text[])) AND hi > lo
GROUP BY s.execution_id
""")


@dataclass(frozen=True, slots=True)
class BucketUsage:
    start: datetime
    end: datetime
    vcpu_ms: int
    mib_ms: int


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def timestamptz_array(moments: Sequence[datetime]) -> str:
    """An array parameter for `CAST(... AS timestamptz[])` as one text literal: PostgreSQL
    parses 8,760 times in a fraction of the time psycopg's list dumper takes in Python."""
    return "{" + ",".join([m.isoformat() for m in moments]) + "}"


def bucket_usage(
    session: Session, team_id: str, bounds: Sequence[datetime], now: datetime,
    stale_after: timedelta,
) -> list[BucketUsage]:
    """Usage in each [bounds[i], bounds[i+1]); every bucket is answered, zero or not.

    Settled usage comes from the hourly rollups, except in hours that a bound cuts, which
    are integrated exactly from segments; open executions are always integrated live.
    """
    used = bucket_totals(session, team_id, bounds, now, stale_after)
    return [BucketUsage(bounds[i], bounds[i + 1], *used.get(i, (0, 0)))
            for i in range(len(bounds) - 1)]


def closing_hour(bounds: Sequence[datetime], now: datetime) -> datetime | None:
    """The hour a read ending at `now` cuts at `now` alone (the last bucket holds all of it up
    to now), if any. Its settled usage up to now is its rollup less what settled segments hold
    after now (none but ends stamped ahead of the clock), which is read by index in a few rows,
    instead of every segment that ended in the hour so far (a number that grows all hour)."""
    end = bounds[-1]
    hour = _floor_hour(end)
    if len(bounds) < 2 or end != now or end == hour or bounds[-2] > hour:
        return None
    return hour


def bucket_totals(
    session: Session, team_id: str, bounds: Sequence[datetime], now: datetime,
    stale_after: timedelta, literal: str | None = None,
) -> dict[int, tuple[int, int]]:
    """`bucket_usage` for long series: (vCPU-ms, MiB-ms) by bucket index, only the buckets
    with usage (a year of hours is 8,760 buckets, most of them empty). `literal`: the bounds
    as `timestamptz_array` writes them, when the caller keeps it."""
    if len(bounds) < 2:
        return {}
    count = len(bounds) - 1
    totals: dict[int, list[int]] = {}

    def add(rows: Any, shift: int = 0, sign: int = 1) -> None:
        for r in rows:
            index = int(r[0]) - 1 + shift
            if 0 <= index < count:
                slot = totals.setdefault(index, [0, 0])
                slot[0] += sign * int(r[1] or 0)
                slot[1] += sign * int(r[2] or 0)

    params = {"team_id": team_id, "now": now, "stale": stale_after}
    everything = literal or timestamptz_array(bounds)
    closing = closing_hour(bounds, now)
    partial = sorted({_floor_hour(b) for b in bounds
                      if (b.minute or b.second or b.microsecond) and _floor_hour(b) != closing})
    statements: list[tuple[Any, dict[str, Any]]] = [
        (_BUCKETED_OPEN, {**params, "start": bounds[0], "end": bounds[-1],
                          "bounds": everything}),
        (_ROLLUPS, {"team_id": team_id, "bounds": everything, "start": _floor_hour(bounds[0]),
                    "end": bounds[-1], "partial": partial})]
    shifts = [(0, 1), (0, 1)]
    for hour in partial:
        lo, hi = max(hour, bounds[0]), min(hour + timedelta(hours=1), bounds[-1])
        inner = [lo, *(b for b in bounds if lo < b < hi), hi]
        shifts.append((bisect_right(bounds, lo) - 1, 1))
        statements.append((_BUCKETED_SETTLED, {**params, "start": lo, "end": hi,
                                               "bounds": inner}))
    if closing is not None:
        # The hour's rollup (counted in the last bucket) less its settled usage after now.
        after = closing + timedelta(hours=1)
        shifts.append((count - 1, -1))
        statements.append((_BUCKETED_SETTLED, {**params, "start": now, "end": after,
                                               "bounds": [now, after]}))
    # One round trip: open executions, rollups and every partial hour.
    for rows, (shift, sign) in zip(pipeline(session, statements), shifts, strict=True):
        add(rows, shift, sign)
    return {i: (v, m) for i, (v, m) in totals.items() if v or m}


def execution_usage(
    session: Session, ids: Sequence[str], start: datetime, end: datetime, now: datetime,
    stale_after: timedelta,
) -> dict[str, tuple[int, int]]:
    if not ids:
        return {}
    rows = session.execute(_PER_EXECUTION, {
        "ids": list(ids), "start": start, "end": end, "now": now, "stale": stale_after})
    return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in rows}


_LIST_EXECUTIONS = """
SELECT e.execution_id, e.sandbox_id, e.team_id, e.template_id, e.start_at, e.start_kind,
       e.vcpu, e.memory_mib, e.disk_mib, e.end_at, e.end_kind, e.end_reason, e.last_event_at,
       e.inferred_end_at
FROM executions e
WHERE e.team_id = :team_id AND e.start_at IS NOT NULL
  {state}
  AND e.start_at < :end
  AND coalesce(e.end_at, e.last_event_at) >= :start
  {cursor}
ORDER BY e.start_at DESC, e.execution_id DESC
LIMIT :limit
"""

_STATE = {"running": f"AND {RUNNING}", "ended": f"AND NOT ({RUNNING})"}


def list_executions(
    session: Session, team_id: str, state: str | None, start: datetime, end: datetime,
    now: datetime, stale_after: timedelta, limit: int, after: tuple[datetime, str] | None,
) -> list[Any]:
    state_sql = _STATE.get(state or "", "")
    cursor_sql = ""
    params: dict[str, Any] = {"team_id": team_id, "start": start, "end": end, "limit": limit,
                              "now": now, "stale": stale_after}
    if after is not None:
        cursor_sql = ("AND (e.start_at, e.execution_id) < "
                      "(CAST(:after_start AS timestamptz), :after_id)")
        params["after_start"], params["after_id"] = after
    sql = _LIST_EXECUTIONS.format(state=state_sql, cursor=cursor_sql)
    return list(session.execute(text(sql), params))


_METRICS = text("""
WITH ex AS (
    SELECT execution_id FROM executions WHERE team_id = :team_id AND sandbox_id = :sandbox_id
), rows AS (
    SELECT m.minute, m.samples, m.cpu_samples, m.cpu_sum, m.cpu_max,
           m.mem_samples, m.mem_sum, m.mem_max
    FROM sample_minutes m JOIN ex USING (execution_id)
    WHERE m.minute >= date_trunc('minute', CAST(:start AS timestamptz)) AND m.minute < :end
    UNION ALL
    SELECT date_trunc('minute', p.time), 1, CAST(p.cpu_centipct IS NOT NULL AS int),
           coalesce(p.cpu_centipct, 0), p.cpu_centipct,
           CAST(p.memory_used_mib IS NOT NULL AS int), coalesce(p.memory_used_mib, 0),
           p.memory_used_mib
    -- Fenced (OFFSET 0): the execution's pending samples (a few minutes of them) are looked
    -- up by execution, then clipped to the window. With the window inside, PostgreSQL may
    -- walk the time-first key of the slice being filled (no statistics yet) and filter every
    -- sample in it: 64 ms a read under load, measured, against 6.
    FROM (SELECT p.* FROM host_stats_pending p JOIN ex USING (execution_id) OFFSET 0) AS p
    WHERE p.time >= date_trunc('minute', CAST(:start AS timestamptz)) AND p.time < :end
)
SELECT minute, sum(samples), sum(cpu_samples), sum(cpu_sum), max(cpu_max),
       sum(mem_samples), sum(mem_sum), max(mem_max)
FROM rows GROUP BY minute ORDER BY minute
""")


def sandbox_teams(session: Session, sandbox_id: str, limit: int = 10) -> list[str]:
    """The teams that ran a sandbox with this id (the orchestrator's ids may repeat)."""
    # Fenced (OFFSET 0): with ORDER BY … LIMIT over the bare table PostgreSQL may walk the
    # team-ordered index and filter every execution (60 ms at 46,000 rows, measured) instead
    # of looking the id up in its own index (0.3 ms).
    rows = session.execute(text(
        "SELECT team_id FROM (SELECT DISTINCT team_id FROM executions "
        "WHERE sandbox_id = :s OFFSET 0) AS t ORDER BY team_id LIMIT :limit"),
        {"s": sandbox_id, "limit": limit})
    return [str(r[0]) for r in rows]


def has_sandbox(session: Session, team_id: str, sandbox_id: str) -> bool:
    return session.execute(text(
        "SELECT 1 FROM executions WHERE team_id = :t AND sandbox_id = :s LIMIT 1"),
        {"t": team_id, "s": sandbox_id}).first() is not None


def sandbox_metrics(
    session: Session, team_id: str, sandbox_id: str, start: datetime, end: datetime
) -> list[Any]:
    """Per-minute figures of the team's sandbox of that id, and of no other team's."""
    return list(session.execute(_METRICS, {"team_id": team_id, "sandbox_id": sandbox_id,
                                           "start": start, "end": end}))


_RUNNING_ALLOCATIONS = text(f"""
SELECT s.vcpu, s.memory_mib
FROM executions e
JOIN execution_segments s ON s.execution_id = e.execution_id AND s.end_at IS NULL
WHERE e.team_id = :team_id AND {RUNNING}
""")


def running_allocations_read(team_id: str, now: datetime, stale_after: timedelta
                             ) -> tuple[Any, dict[str, Any]]:
    """The statement of `running_allocations`, to send in a caller's pipeline."""
    return _RUNNING_ALLOCATIONS, {"team_id": team_id, "now": now, "stale": stale_after}


def running_allocations_from_rows(rows: Any) -> list[tuple[int, int]]:
    """(vCPU, MiB) allocated now by each running execution of the team."""
    return [(int(r[0]), int(r[1])) for r in rows]


# --- the same reads for many teams at once (the enforcement sweep's looks) ------------------
#
# Each team brings its own bounds (its unbilled months, its month, its price changes), sent as
# flat arrays (team, bound) in order and gathered back per team: one statement per kind of
# read, whatever the number of teams. The fragments are the per-team ones above, so both bill
# the same milliseconds.

_BOUNDS = """
    SELECT u.team_id, array_agg(u.bound ORDER BY u.n) AS bounds
    FROM unnest(CAST(:bound_teams AS text[]), CAST(:bounds AS timestamptz[]))
         WITH ORDINALITY AS u(team_id, bound, n)
    GROUP BY u.team_id"""

_PIECES = """
), piece AS (
    SELECT seg.k, i, seg.vcpu, seg.memory_mib,
           CAST(extract(epoch FROM least(seg.hi, seg.bounds[i + 1])
                                  - greatest(seg.lo, seg.bounds[i])) * 1000 AS bigint) AS ms
    FROM seg
    CROSS JOIN LATERAL generate_series(
        width_bucket(seg.lo, seg.bounds),
        width_bucket(seg.hi - interval '1 millisecond', seg.bounds)) AS i
    WHERE seg.hi > seg.lo
)
SELECT k, i, CAST(sum(vcpu * ms) AS bigint), CAST(sum(memory_mib * ms) AS bigint)
FROM piece GROUP BY k, i
"""

# Every lookup below is a LATERAL subquery fenced with OFFSET 0, keyed by a team (or an
# execution): the plan is then an index lookup per team whatever the statistics say (on a
# server without them, joins of these arrays walked every segment per team).

# Open executions of the teams, integrated live over each team's bounds.
_MANY_OPEN = text(f"""
WITH b AS ({_BOUNDS}
), seg AS (
    SELECT b.team_id AS k, b.bounds, s.vcpu, s.memory_mib,
           greatest(s.start_at, b.bounds[1]) AS lo,
           least({SEGMENT_END}, b.bounds[cardinality(b.bounds)]) AS hi
    FROM b
    CROSS JOIN LATERAL (
        SELECT e.execution_id, e.end_at, e.inferred_end_at, e.last_event_at
        FROM executions e WHERE e.team_id = b.team_id AND {OPEN} OFFSET 0) e
    CROSS JOIN LATERAL (
        SELECT s.start_at, s.end_at, s.vcpu, s.memory_mib
        FROM execution_segments s WHERE s.execution_id = e.execution_id OFFSET 0) s
    WHERE s.start_at < b.bounds[cardinality(b.bounds)]
      AND (s.end_at IS NULL OR s.end_at > b.bounds[1])
{_PIECES}""")

# Settled usage per team from the rollups (and deltas), leaving out each team's partial hours.
_MANY_ROLLUPS = text(f"""
WITH b AS ({_BOUNDS}
), p AS (
    SELECT u.team_id, array_agg(u.hour) AS hours
    FROM unnest(CAST(:partial_teams AS text[]), CAST(:partial_hours AS timestamptz[]))
         AS u(team_id, hour)
    GROUP BY u.team_id
), h AS (
    SELECT u.team_id, u.start
    FROM unnest(CAST(:start_teams AS text[]), CAST(:starts AS timestamptz[])) AS u(team_id, start)
)
SELECT h.team_id, width_bucket(r.hour, b.bounds) AS i,
       CAST(sum(r.vcpu_ms) AS bigint), CAST(sum(r.mib_ms) AS bigint)
FROM h JOIN b ON b.team_id = h.team_id
LEFT JOIN p ON p.team_id = h.team_id
CROSS JOIN LATERAL (
    SELECT r.hour, r.vcpu_ms, r.mib_ms FROM {ROLLUPS} r
    WHERE r.team_id = h.team_id AND r.hour >= h.start
      AND r.hour < b.bounds[cardinality(b.bounds)] OFFSET 0) r
WHERE NOT (r.hour = ANY(coalesce(p.hours, CAST('{{}}' AS timestamptz[]))))
GROUP BY h.team_id, i
""")

# Settled executions in the partial hours, each (team, hour) piece `k` with its inner bounds:
# the two branches of `_BUCKETED_SETTLED`, per piece.
_MANY_SETTLED = text(f"""
WITH kb AS (
    SELECT u.k, array_agg(u.bound ORDER BY u.n) AS bounds
    FROM unnest(CAST(:bound_keys AS int[]), CAST(:bounds AS timestamptz[]))
         WITH ORDINALITY AS u(k, bound, n)
    GROUP BY u.k
), k AS (
    SELECT u.k, u.team_id, u.lo, u.hi, kb.bounds
    FROM unnest(CAST(:keys AS int[]), CAST(:key_teams AS text[]), CAST(:los AS timestamptz[]),
                CAST(:his AS timestamptz[])) AS u(k, team_id, lo, hi)
    JOIN kb ON kb.k = u.k
), seg AS (
    SELECT k.k, k.bounds, s.vcpu, s.memory_mib, greatest(s.start_at, k.lo) AS lo,
           least(s.end_at, k.hi) AS hi
    FROM k
    CROSS JOIN LATERAL (
        SELECT s.execution_id, s.start_at, s.end_at, s.vcpu, s.memory_mib
        FROM execution_segments s
        WHERE s.team_id = k.team_id AND s.end_at > k.lo AND s.start_at < k.hi OFFSET 0) s
    JOIN executions e ON e.execution_id = s.execution_id
    WHERE (e.end_at IS NOT NULL OR e.inferred_end_at IS NOT NULL)
    UNION ALL
    SELECT k.k, k.bounds, s.vcpu, s.memory_mib, greatest(s.start_at, k.lo),
           least(e.inferred_end_at, k.hi)
    FROM k
    CROSS JOIN LATERAL (
        SELECT e.execution_id, e.inferred_end_at FROM executions e
        WHERE e.team_id = k.team_id AND e.inferred_end_at > k.lo OFFSET 0) e
    CROSS JOIN LATERAL (
        SELECT s.start_at, s.vcpu, s.memory_mib FROM execution_segments s
        WHERE s.execution_id = e.execution_id AND s.end_at IS NULL OFFSET 0) s
    WHERE s.start_at < k.hi
{_PIECES}""")


def bucket_usage_many(
    session: Session, bounds_by_team: Mapping[str, Sequence[datetime]], now: datetime,
    stale_after: timedelta,
) -> dict[str, list[BucketUsage]]:
    """`bucket_usage` of many teams, each over its own bounds, in one round trip of three
    statements whatever the number of teams; the same integers, bucket for bucket."""
    asks = {t: list(b) for t, b in bounds_by_team.items() if len(b) >= 2}
    totals = {t: [[0, 0] for _ in range(len(b) - 1)] for t, b in asks.items()}

    def add(team_id: str, index: int, vcpu_ms: Any, mib_ms: Any, sign: int = 1) -> None:
        rows = totals[team_id]
        if 0 <= index < len(rows):
            rows[index][0] += sign * int(vcpu_ms or 0)
            rows[index][1] += sign * int(mib_ms or 0)

    flat_teams = [t for t, b in asks.items() for _ in b]
    flat_bounds = [x for b in asks.values() for x in b]
    partial_teams: list[str] = []
    partial_hours: list[datetime] = []
    # (k, team, lo, hi, shift, sign): a partial hour's piece, or (sign -1) a closing hour's
    # settled usage after now, taken from its rollup (see `closing_hour`).
    keys: list[tuple[int, str, datetime, datetime, int, int]] = []
    key_bounds: list[tuple[int, datetime]] = []
    for team_id, bounds in asks.items():
        closing = closing_hour(bounds, now)
        for hour in sorted({_floor_hour(b) for b in bounds if b != _floor_hour(b)}):
            if hour == closing:
                k, after = len(keys), hour + timedelta(hours=1)
                keys.append((k, team_id, now, after, len(bounds) - 2, -1))
                key_bounds += [(k, now), (k, after)]
                continue
            partial_teams.append(team_id)
            partial_hours.append(hour)
            lo, hi = max(hour, bounds[0]), min(hour + timedelta(hours=1), bounds[-1])
            k = len(keys)
            keys.append((k, team_id, lo, hi, max(i for i, b in enumerate(bounds) if b <= lo), 1))
            key_bounds += [(k, x) for x in [lo, *(b for b in bounds if lo < b < hi), hi]]
    if not asks:
        return {}
    live = {"now": now, "stale": stale_after}
    stamps = timestamptz_array  # one text literal each: no per-element dumping
    statements: list[tuple[Any, dict[str, Any]]] = [
        (_MANY_OPEN, {**live, "bound_teams": flat_teams, "bounds": stamps(flat_bounds)}),
        (_MANY_ROLLUPS, {"bound_teams": flat_teams, "bounds": stamps(flat_bounds),
                         "partial_teams": partial_teams, "partial_hours": stamps(partial_hours),
                         "start_teams": list(asks),
                         "starts": stamps([_floor_hour(b[0]) for b in asks.values()])})]
    if keys:
        statements.append((_MANY_SETTLED, {
            "bound_keys": [k for k, _ in key_bounds],
            "bounds": stamps([x for _, x in key_bounds]), "keys": [k[0] for k in keys],
            "key_teams": [k[1] for k in keys], "los": stamps([k[2] for k in keys]),
            "his": stamps([k[3] for k in keys])}))
    answers = pipeline(session, statements)
    for team_id, i, vcpu_ms, mib_ms in [*answers[0], *answers[1]]:
        add(str(team_id), int(i) - 1, vcpu_ms, mib_ms)
    for k, i, vcpu_ms, mib_ms in answers[2] if keys else []:
        _, team_id, _, _, shift, sign = keys[int(k)]
        add(team_id, int(i) - 1 + shift, vcpu_ms, mib_ms, sign)
    return {t: [BucketUsage(b[i], b[i + 1], totals[t][i][0], totals[t][i][1])
                for i in range(len(b) - 1)] for t, b in asks.items()}
