"""Usage integrated straight from the raw lifecycle events: the independent path.

The service's own usage (segments, hourly rollups) is derived from the same events by
`metering.executions.service.recompute` and kept up by deltas; a month close reads that. This
module re-derives usage without it, in one SQL statement over `lifecycle_events`, so that an
invoice can be checked against what the events say (`metering invoices verify`) and a charge
can be traced to its executions as of the moment it was billed.

The rules are the contract's, written again here rather than shared: an execution runs from
its earliest created/resumed event (its vcpu and memory_mib are the first allocation) to its
earliest paused/killed one (never before its start); `updated` events change the allocation
from their time on (from the start, if stamped earlier), a field they leave out keeps its value;
at the same millisecond a start sorts before updates, updates before ends, and ties break on
(source, id). With no end event an execution runs while its newest event (of any type, the
recorded `executions.last_event_at`) is less than `stale_after` old, and ended at that event
after. Neither segments nor rollups are read.

`received_by` reads the events as they stood at an instant (those stored by then), which is
how an invoice is re-derived as of the moment its close read usage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class Window:
    """Part of a team's time to total separately (e.g. under one price version)."""

    team_id: str
    start: datetime
    end: datetime
    index: int


@dataclass(frozen=True, slots=True)
class ExecutionUsage:
    """One execution's usage inside the windows asked for, from its events alone."""

    execution_id: str
    team_id: str
    sandbox_id: str
    template_id: str | None
    start_at: datetime
    stop_at: datetime  # its end (true or inferred), or "now" while it runs
    end_inferred: bool  # no end event: ended at (or runs until) its newest event
    running: bool
    vcpu: int  # the first allocation
    memory_mib: int
    ms: int  # milliseconds inside the windows
    vcpu_ms: int
    mib_ms: int


# One pass of window functions per execution (no self-joins: their row estimates go wrong on
# filtered CTEs and turn into nested loops): mark each event with its execution's start and
# end, keep the first start and the updates, give each its execution's stop, order them, carry
# a field an update leaves out from before, and cut the segments at the windows.
_BODY = """
WITH ev AS (
    SELECT le.execution_id, le.team_id, le.time, le.source, le.id, le.subject,
           CASE WHEN le.type IN ('sandbox.lifecycle.created', 'sandbox.lifecycle.resumed')
                THEN le.data ->> 'template_id' END AS template_id,
           CASE WHEN le.type IN ('sandbox.lifecycle.created', 'sandbox.lifecycle.resumed') THEN 0
                WHEN le.type = 'sandbox.lifecycle.updated' THEN 1 ELSE 2 END AS rank,
           CAST(le.data ->> 'vcpu' AS bigint) AS vcpu,
           CAST(le.data ->> 'memory_mib' AS bigint) AS mem
    FROM lifecycle_events le
    WHERE {scope}
      AND (CAST(:received_by AS timestamptz) IS NULL
           OR le.received_at <= CAST(:received_by AS timestamptz))
), marked AS (
    -- One sort: the whole-partition figures share it with the order that puts the first
    -- start event first.
    SELECT ev.*,
           min(ev.time) FILTER (WHERE ev.rank = 0) OVER w AS start_at,
           min(ev.time) FILTER (WHERE ev.rank = 2) OVER w AS end_at,
           bool_or(ev.rank = 1) OVER w AS resized,
           row_number() OVER (PARTITION BY ev.execution_id
                              ORDER BY ev.rank <> 0, ev.time, ev.source, ev.id) AS nth
    FROM ev WINDOW w AS (PARTITION BY ev.execution_id)
), base AS (
    -- The first start (its allocation, defaulted) and every update, of executions that
    -- started before the end of what is read.
    SELECT m.execution_id, m.team_id, m.subject, m.template_id, m.rank, m.time, m.source,
           m.id, m.start_at, m.end_at, m.resized,
           CASE WHEN m.rank = 0 THEN coalesce(m.vcpu, 1) ELSE m.vcpu END AS vcpu,
           CASE WHEN m.rank = 0 THEN coalesce(m.mem, 0) ELSE m.mem END AS mem
    FROM marked m
    WHERE m.start_at < CAST(:end AS timestamptz)
      AND ((m.rank = 0 AND m.nth = 1) OR m.rank = 1)
), timed AS (
    SELECT b.*, greatest(b.time, b.start_at) AS t,
           b.end_at IS NULL AS inferred,
           b.end_at IS NULL AND x.last_event_at > CAST(:now AS timestamptz)
                                                  - CAST(:stale AS interval) AS running,
           greatest(b.start_at, CASE
               WHEN b.end_at IS NOT NULL THEN b.end_at
               WHEN x.last_event_at > CAST(:now AS timestamptz) - CAST(:stale AS interval)
                   THEN CAST(:now AS timestamptz)
               ELSE coalesce(x.last_event_at, b.start_at) END) AS stop
    FROM base b
    LEFT JOIN executions x ON x.execution_id = b.execution_id AND b.end_at IS NULL
), ordered AS (
    -- Only executions resized by updates need ordering: the others are one segment.
    SELECT o.*,
           lead(o.t) OVER w AS next_t,
           count(o.vcpu) OVER w AS gv, count(o.mem) OVER w AS gm,
           first_value(o.subject) OVER w AS sandbox_id,
           first_value(o.template_id) OVER w AS template,
           first_value(o.vcpu) OVER w AS vcpu0, first_value(o.mem) OVER w AS mem0
    FROM timed o
    WHERE o.stop > CAST(:start AS timestamptz) AND o.resized
    WINDOW w AS (PARTITION BY o.execution_id ORDER BY o.t, o.rank, o.time, o.source, o.id)
), segs AS (
    -- A field an update leaves out keeps the value it had: the first of its run of nulls.
    SELECT o.execution_id, o.team_id, o.sandbox_id, o.template, o.start_at, o.stop,
           o.inferred, o.running, o.vcpu0, o.mem0,
           first_value(o.vcpu) OVER (PARTITION BY o.execution_id, o.gv
                                     ORDER BY o.t, o.rank, o.time, o.source, o.id) AS vcpu,
           first_value(o.mem) OVER (PARTITION BY o.execution_id, o.gm
                                    ORDER BY o.t, o.rank, o.time, o.source, o.id) AS mem,
           o.t AS lo, least(coalesce(o.next_t, o.stop), o.stop) AS hi
    FROM ordered o
    UNION ALL
    SELECT t.execution_id, t.team_id, t.subject, t.template_id, t.start_at, t.stop,
           t.inferred, t.running, t.vcpu, t.mem, t.vcpu, t.mem, t.start_at, t.stop
    FROM timed t
    WHERE t.stop > CAST(:start AS timestamptz) AND NOT t.resized
), windows AS (
    SELECT * FROM unnest(CAST(:w_team AS text[]), CAST(:w_lo AS timestamptz[]),
                         CAST(:w_hi AS timestamptz[]), CAST(:w_index AS int[]))
        AS w(team_id, lo, hi, idx)
), pieces AS (
    SELECT s.*, coalesce(w.idx, 0) AS idx, m.ms
    FROM segs s
    LEFT JOIN windows w ON w.team_id = s.team_id AND w.lo < s.hi AND w.hi > s.lo
    CROSS JOIN LATERAL (
        SELECT CAST(extract(epoch FROM
                   least(s.hi, coalesce(w.hi, CAST(:end AS timestamptz)))
                   - greatest(s.lo, coalesce(w.lo, CAST(:start AS timestamptz)))) * 1000
               AS bigint) AS ms) m
    WHERE m.ms > 0 {window_rule}
)
"""

# Per team and window: what an invoice's usage lines are made of.
_PER_TEAM = """
SELECT team_id, idx, CAST(sum(vcpu * ms) AS bigint), CAST(sum(mem * ms) AS bigint)
FROM pieces GROUP BY team_id, idx
"""

# Per execution, with what the drill-down shows of it.
_PER_EXECUTION = """
SELECT execution_id, team_id, sandbox_id, template, start_at, stop, inferred, running, vcpu0,
       mem0, CAST(sum(ms) AS bigint), CAST(sum(vcpu * ms) AS bigint),
       CAST(sum(mem * ms) AS bigint)
FROM pieces
GROUP BY execution_id, team_id, sandbox_id, template, start_at, stop, inferred, running, vcpu0,
         mem0
"""

_ALL = "TRUE"
_TEAMS = ("le.execution_id IN (SELECT execution_id FROM executions "
          "WHERE team_id = ANY(CAST(:teams AS text[])))")
_IDS = "le.execution_id = ANY(CAST(:ids AS text[]))"


def _params(start: datetime, end: datetime, now: datetime, stale_after: timedelta,
            received_by: datetime | None, windows: Sequence[Window]) -> dict[str, Any]:
    return {"start": start, "end": end, "now": now, "stale": stale_after,
            "received_by": received_by, "w_team": [w.team_id for w in windows],
            "w_lo": [w.start for w in windows], "w_hi": [w.end for w in windows],
            "w_index": [w.index for w in windows]}


def team_usage(
    session: Session, start: datetime, end: datetime, now: datetime, stale_after: timedelta,
    *, received_by: datetime | None = None, team_ids: Sequence[str] | None = None,
    windows: Sequence[Window] = (),
) -> dict[tuple[str, int], tuple[int, int]]:
    """(team, window index) -> (vCPU-ms, MiB-ms) inside [start, end), from events alone.

    A team with windows gets one total per window (they should tile [start, end)); any other
    team one total, index 0. `team_ids` None: every team (one scan of the events)."""
    params = _params(start, end, now, stale_after, received_by, windows)
    scope = _ALL
    if team_ids is not None:
        scope = _TEAMS
        params["teams"] = list(team_ids)
    sql = _BODY.format(scope=scope, window_rule="") + _PER_TEAM
    return {(str(r[0]), int(r[1])): (int(r[2] or 0), int(r[3] or 0))
            for r in session.execute(text(sql), params)}


def execution_usage(
    session: Session, execution_ids: Sequence[str], windows: Sequence[Window], now: datetime,
    stale_after: timedelta, *, received_by: datetime | None = None,
) -> list[ExecutionUsage]:
    """The named executions' usage inside `windows` (of their team), from events alone;
    executions with nothing inside them are left out."""
    if not execution_ids or not windows:
        return []
    start = min(w.start for w in windows)
    end = max(w.end for w in windows)
    params = _params(start, end, now, stale_after, received_by, windows)
    params["ids"] = list(execution_ids)
    # Only time inside a window counts (not the whole [start, end) span between windows).
    sql = _BODY.format(scope=_IDS, window_rule="AND w.idx IS NOT NULL") + _PER_EXECUTION
    return [ExecutionUsage(
        execution_id=r[0], team_id=r[1], sandbox_id=r[2], template_id=r[3], start_at=r[4],
        stop_at=r[5], end_inferred=bool(r[6]), running=bool(r[7]), vcpu=int(r[8]),
        memory_mib=int(r[9]), ms=int(r[10] or 0), vcpu_ms=int(r[11] or 0),
        mib_ms=int(r[12] or 0)) for r in session.execute(text(sql), params)]


@dataclass(frozen=True, slots=True)
class Candidate:
    execution_id: str
    start_at: datetime


_CANDIDATES = """
SELECT execution_id, start_at FROM executions
WHERE team_id = :team AND start_at IS NOT NULL AND start_at < :hi
  AND coalesce(end_at, last_event_at) >= :lo {after}
ORDER BY start_at DESC, execution_id DESC
LIMIT :limit
"""


def candidates(session: Session, team_id: str, start: datetime, end: datetime, limit: int,
               after: tuple[datetime, str] | None) -> list[Candidate]:
    """A team's executions that may hold usage in [start, end), newest start first, by the
    (team, start) index; only to find them: their usage comes from their events."""
    params: dict[str, Any] = {"team": team_id, "lo": start, "hi": end, "limit": limit}
    cursor = ""
    if after is not None:
        cursor = ("AND (start_at, execution_id) < "
                  "(CAST(:after_start AS timestamptz), :after_id)")
        params["after_start"], params["after_id"] = after
    rows = session.execute(text(_CANDIDATES.format(after=cursor)), params)
    return [Candidate(str(r[0]), r[1]) for r in rows]


def execution_owner(session: Session, execution_id: str) -> tuple[str, str] | None:
    """(team, sandbox) of an execution (it belongs to its team for ever), or None."""
    row = session.execute(text("SELECT team_id, sandbox_id FROM executions "
                               "WHERE execution_id = :e"), {"e": execution_id}).first()
    return None if row is None else (str(row[0]), str(row[1]))
