"""Usage of many teams at once: the public read the month close uses for thousands of teams.

`usage_totals` answers, for every team with usage in an hour-aligned window, its exact integer
vCPU-ms and MiB-ms: settled executions from the hourly rollups, open executions integrated
live with the running/stale rule of `metering.usage.repository` (the same SQL fragment), in
one statement so both halves see one snapshot. It is `bucket_usage` with a single bucket,
for all teams in one scan instead of one query per team.

Price changes inside the window are not this function's business: callers cut the window at a
team's price changes with `metering.usage.service.usage_by_price_period` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

# One definition of "open" and of a segment's billed end: the bulk read must bill exactly
# what the per-team read bills.
from metering.usage.repository import OPEN, ROLLUPS, SEGMENT_END


@dataclass(frozen=True, slots=True)
class TeamUsage:
    """A team's exact usage in the window."""

    team_id: str
    vcpu_ms: int
    mib_ms: int


_TOTALS = """
WITH settled AS (
    SELECT team_id, sum(vcpu_ms) AS vcpu_ms, sum(mib_ms) AS mib_ms
    FROM {rollups} r
    WHERE hour >= :start AND hour < :end {team_filter_rollups}
    GROUP BY team_id
), live AS (
    SELECT e.team_id,
           sum(s.vcpu * w.ms) AS vcpu_ms, sum(s.memory_mib * w.ms) AS mib_ms
    FROM executions e
    JOIN execution_segments s ON s.execution_id = e.execution_id
    CROSS JOIN LATERAL (
        SELECT CAST(extract(epoch FROM least({segment_end}, CAST(:end AS timestamptz))
                                       - greatest(s.start_at, CAST(:start AS timestamptz)))
                    * 1000 AS bigint) AS ms) w
    WHERE {open} {team_filter_live}
      AND s.start_at < :end AND (s.end_at IS NULL OR s.end_at > :start)
      AND w.ms > 0
    GROUP BY e.team_id
)
SELECT team_id, CAST(sum(vcpu_ms) AS bigint), CAST(sum(mib_ms) AS bigint)
FROM (SELECT * FROM settled UNION ALL SELECT * FROM live) u
GROUP BY team_id
ORDER BY team_id
"""

_ALL_TEAMS = text(_TOTALS.format(
    segment_end=SEGMENT_END, open=OPEN, rollups=ROLLUPS, team_filter_rollups="",
    team_filter_live=""))
_SOME_TEAMS = text(_TOTALS.format(
    segment_end=SEGMENT_END, open=OPEN, rollups=ROLLUPS,
    team_filter_rollups="AND team_id = ANY(CAST(:teams AS text[]))",
    team_filter_live="AND e.team_id = ANY(CAST(:teams AS text[]))"))


def _hour_aligned(moment: datetime) -> bool:
    return moment == moment.replace(minute=0, second=0, microsecond=0)


def usage_totals(
    session: Session, start: datetime, end: datetime, now: datetime, stale_after: timedelta,
    team_ids: Sequence[str] | None = None,
) -> dict[str, TeamUsage]:
    """Exact usage in [start, end) of every team that has any (or of `team_ids` only).

    `start` and `end` must be whole UTC hours (a month is): the rollups cannot split an hour.
    Teams whose usage is zero are left out.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if not (_hour_aligned(start) and _hour_aligned(end)):
        raise ValueError("usage_totals needs whole-hour bounds; use usage_by_price_period")
    if end <= start:
        return {}
    params: dict[str, object] = {"start": start, "end": end, "now": now, "stale": stale_after}
    statement = _ALL_TEAMS
    if team_ids is not None:
        if not team_ids:
            return {}
        statement = _SOME_TEAMS
        params["teams"] = sorted(set(team_ids))
    out: dict[str, TeamUsage] = {}
    for team_id, vcpu_ms, mib_ms in session.execute(statement, params):
        vcpu, mib = int(vcpu_ms or 0), int(mib_ms or 0)
        if vcpu or mib:
            out[str(team_id)] = TeamUsage(str(team_id), vcpu, mib)
    return out
