"""Every query of plans, versions, assignments, overrides and add-ons."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from psycopg.rows import TupleRow
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.core.plan_versions import Assignment, Version
from billing.plans.models import AddOnRow, LimitOverrideRow, Plan, PlanVersion, TeamPlan
from metering.core.limits import LIMIT_FIELDS, AddOn, LimitOverride
from metering.plugins import TeamRead

# Plan versions change rarely and are read on every admission: each process keeps them for a
# few seconds (a new version is normally effective in the future anyway). An API process
# reads them again every `REFRESH_SECONDS` in the background (`billing.app`), so admissions
# answered on the event loop never find the cache expired and detour to the threaded path.
_CACHE_SECONDS = 5.0
REFRESH_SECONDS = _CACHE_SECONDS / 2
_cache: tuple[float, dict[str, list[Version]]] | None = None
_cache_lock = threading.Lock()


def to_version(row: PlanVersion) -> Version:
    return Version(
        id=row.id, plan_code=row.plan_code, effective_at=row.effective_at,
        currency=row.currency, monthly_fee=row.monthly_fee,
        one_time_credit=row.one_time_credit, credit_enforced=row.credit_enforced,
        minimum_commitment=row.minimum_commitment, vcpu_second_price=row.vcpu_second_price,
        gib_second_price=row.gib_second_price, limits=row.limits,
    )


def all_versions(session: Session, fresh: bool = False) -> dict[str, list[Version]]:
    global _cache  # noqa: PLW0603 - the per-process cache of a tiny, rarely changed table
    now = time.monotonic()
    with _cache_lock:
        if not fresh and _cache is not None and now - _cache[0] < _CACHE_SECONDS:
            return _cache[1]
    rows = session.execute(select(PlanVersion).order_by(PlanVersion.effective_at)).scalars()
    versions: dict[str, list[Version]] = {}
    for row in rows:
        versions.setdefault(row.plan_code, []).append(to_version(row))
    with _cache_lock:
        _cache = (now, versions)
    return versions


def cached_versions() -> dict[str, list[Version]] | None:
    """The cached versions while still fresh, without touching the database; else None."""
    with _cache_lock:
        if _cache is not None and time.monotonic() - _cache[0] < _CACHE_SECONDS:
            return _cache[1]
    return None


def forget_cache() -> None:
    global _cache  # noqa: PLW0603
    with _cache_lock:
        _cache = None


def plans(session: Session) -> list[Plan]:
    return list(session.execute(select(Plan).order_by(Plan.code)).scalars())


def plan(session: Session, code: str) -> Plan | None:
    return session.get(Plan, code)


def assignments(session: Session, team_id: str) -> list[Assignment]:
    rows = session.execute(
        select(TeamPlan.plan_code, TeamPlan.effective_at)
        .where(TeamPlan.team_id == team_id).order_by(TeamPlan.effective_at)
    )
    return [Assignment(r.plan_code, r.effective_at) for r in rows]


def overrides(session: Session, team_id: str) -> list[LimitOverride]:
    rows = session.execute(select(LimitOverrideRow).where(LimitOverrideRow.team_id == team_id))
    return [r.override for r in rows.scalars()]


def addons(session: Session, team_id: str) -> list[AddOn]:
    rows = session.execute(select(AddOnRow).where(AddOnRow.team_id == team_id))
    return [AddOn(field=r.field, delta=r.delta, start=r.starts_at, end=r.ends_at)  # type: ignore[arg-type]
            for r in rows.scalars()]


def add_assignment(session: Session, team_id: str, plan_code: str, at: datetime) -> None:
    from sqlalchemy.dialects.postgresql import insert

    session.execute(
        insert(TeamPlan).values(team_id=team_id, plan_code=plan_code, effective_at=at)
        .on_conflict_do_update(index_elements=["team_id", "effective_at"],
                               set_={"plan_code": plan_code})
    )


@dataclass(frozen=True, slots=True)
class TeamContext(TeamRead):
    """Everything about a team that limits and standing need, read in one round trip (also
    billing's read of a team in an admission's first round trip)."""

    assignments: list[Assignment]
    overrides: list[LimitOverride]
    addons: list[AddOn]
    exists: bool
    blocked_at: datetime | None
    blocked_reason: str | None
    spend_limit: Decimal | None


# Driver paramstyle, so that admissions can pipeline it with their own reads. An override
# comes as [start, end, *limits].
CONTEXT_SQL = (f"""
SELECT
  (SELECT json_agg(json_build_array(plan_code, effective_at) ORDER BY effective_at)
   FROM team_plans WHERE team_id = %(t)s),
  (SELECT json_agg(json_build_array(starts_at, ends_at, {", ".join(LIMIT_FIELDS)}))
   FROM team_limit_overrides WHERE team_id = %(t)s),
  (SELECT json_agg(json_build_array(field, delta, starts_at, ends_at))
   FROM team_addons WHERE team_id = %(t)s),
  t.id IS NOT NULL, t.blocked_at, t.blocked_reason, t.spend_limit
FROM (SELECT 1) one LEFT JOIN teams t ON t.id = %(t)s
""")


# `CONTEXT_SQL` for each team of `%(teams)s`, its row headed by the team's id.
CONTEXTS_SQL = ("SELECT q.team_id, x.* FROM unnest(CAST(%(teams)s AS text[])) AS q(team_id) "
                "CROSS JOIN LATERAL (" + CONTEXT_SQL.replace("%(t)s", "q.team_id") + ") x")


def team_contexts(session: Session, team_ids: Sequence[str]) -> dict[str, TeamContext]:
    """`team_context` of many teams in one statement."""
    rows = session.connection().exec_driver_sql(CONTEXTS_SQL, {"teams": sorted(set(team_ids))})
    return {row[0]: context_from_row(row[1:]) for row in rows}


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def team_context(session: Session, team_id: str) -> TeamContext:
    return context_from_row(
        session.connection().exec_driver_sql(CONTEXT_SQL, {"t": team_id}).one())


def context_from_row(row: TupleRow) -> TeamContext:
    """The team from a row of `CONTEXT_SQL`."""
    assignments = [Assignment(p, datetime.fromisoformat(at)) for p, at in (row[0] or [])]
    overrides = [LimitOverride(start=_ts(o[0]), end=_ts(o[1]),
                               **dict(zip(LIMIT_FIELDS, o[2:], strict=True)))
                 for o in (row[1] or [])]
    addons = [AddOn(field=a[0], delta=a[1], start=_ts(a[2]), end=_ts(a[3]))
              for a in (row[2] or [])]
    return TeamContext(assignments, overrides, addons, bool(row[3]), row[4], row[5], row[6])
