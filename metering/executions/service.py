"""Keeping executions true to their lifecycle events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from datetime import datetime
from typing import Any, cast

from sqlalchemy.orm import Session

from metering.core.clock import from_ms, to_ms
from metering.core.usage import LifecycleEvent, LifecycleKind, build_timeline
from metering.executions import repository as repo
from metering.executions.repository import Locked, Recomputed


def _as_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    return int(value)


def recompute(session: Session, ids: Collection[str], locked: Locked, *,
              commit: bool = False) -> None:
    """Rebuild the named executions from all their lifecycle events (stored + just added),
    from what `repo.lock_statements` locked and read (for these and perhaps more), and write
    them, putting back the settled usage of every locked execution (`commit`: with the unit
    of work's COMMIT, in the same round trip).

    The rows were locked first, so two batches touching one execution serialize and the
    second sees the first's events. Every execution named must exist (ingest claims it before);
    one that does not is an error, never a silently skipped recompute.
    """
    team_of = locked.team_of
    rebuild = set(ids)
    missing = rebuild - team_of.keys()
    if missing:
        raise RuntimeError(f"executions to recompute not found: {sorted(missing)[:5]}")
    by_execution: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in locked.events:
        if row[0] in rebuild:
            by_execution[row[0]].append(row)
    items: list[Recomputed] = []
    for execution_id, rows in by_execution.items():
        events: list[LifecycleEvent] = []
        disk: int | None = None
        template: str | None = None
        newest: datetime = rows[0][2]
        start_ms: int | None = None
        for _, type_, time, data, source, event_id in rows:
            kind = cast(LifecycleKind, type_.rsplit(".", 1)[1])
            newest = max(newest, time)
            at = to_ms(time)
            events.append(LifecycleEvent(
                kind=kind, at_ms=at, vcpu=_as_int(data.get("vcpu")),
                memory_mib=_as_int(data.get("memory_mib")), source=source, event_id=event_id,
                reason=data.get("reason") if kind == "killed" else None,
            ))
            if kind in ("created", "resumed") and (start_ms is None or at < start_ms):
                start_ms = at
                disk = _as_int(data.get("disk_mib"))
                template = data.get("template_id")
        timeline = build_timeline(events)
        items.append(Recomputed(
            execution_id=execution_id,
            team_id=team_of[execution_id],
            timeline=timeline,
            start_at=None if timeline.start_ms is None else from_ms(timeline.start_ms),
            end_at=None if timeline.true_end_ms is None else from_ms(timeline.true_end_ms),
            disk_mib=disk,
            template_id=template,
            last_event_at=newest,
            segment_bounds=tuple(
                (from_ms(s.start_ms), None if s.end_ms is None else from_ms(s.end_ms))
                for s in timeline.segments
            ),
        ))
    repo.store_recomputed(session, items, sorted(team_of), commit=commit)
