"""Interval integration: an execution's lifecycle events become exact integer usage.

Pure functions only. An execution is billed from its start (created/resumed) to its end
(the earliest paused/killed), at the vCPU and MiB allocated at each instant (changed by
`updated`). With no end event, it ends at its newest event once that event is older than
`stale_after`; until then it is running and accrues up to "now". Times are integer
milliseconds since the epoch, so the arithmetic is exact and independent of arrival order.

Ordering rule for events at the same millisecond: starts first, then updates, then ends;
ties within a kind break on (source, id). That makes the result a function of the *set* of
events, whatever order they arrived in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

LifecycleKind = Literal["created", "resumed", "updated", "paused", "killed"]
START_KINDS: frozenset[str] = frozenset({"created", "resumed"})
END_KINDS: frozenset[str] = frozenset({"paused", "killed"})
_KIND_RANK = {"created": 0, "resumed": 0, "updated": 1, "paused": 2, "killed": 2}


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One lifecycle event of one execution, reduced to what billing needs."""

    kind: LifecycleKind
    at_ms: int
    vcpu: int | None = None
    memory_mib: int | None = None
    source: str = ""
    event_id: str = ""
    reason: str | None = None

    def sort_key(self) -> tuple[int, int, str, str]:
        return (self.at_ms, _KIND_RANK[self.kind], self.source, self.event_id)


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of constant allocation. `end_ms` None means "until the execution ends"."""

    start_ms: int
    end_ms: int | None
    vcpu: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class Timeline:
    """What an execution's lifecycle events say, independent of the clock."""

    start_ms: int | None
    start_kind: str | None
    vcpu: int | None
    memory_mib: int | None
    true_end_ms: int | None
    end_kind: str | None
    end_reason: str | None
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    """Integer usage: vCPU-milliseconds and MiB-milliseconds."""

    vcpu_ms: int = 0
    mib_ms: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.vcpu_ms + other.vcpu_ms, self.mib_ms + other.mib_ms)


ZERO = Usage()


def build_timeline(events: Iterable[LifecycleEvent]) -> Timeline:
    """Fold an execution's lifecycle events (any order, duplicates allowed) into segments.

    The start is the earliest created/resumed; its vcpu and memory are the initial allocation.
    Updates change the allocation from their time on; an update at or before the start
    applies from the start (clock skew between hosts must not invent or drop usage). The end
    is the earliest paused/killed; nothing after it is billed.
    """
    ordered = sorted(set(events), key=LifecycleEvent.sort_key)
    start = next((e for e in ordered if e.kind in START_KINDS), None)
    end = next((e for e in ordered if e.kind in END_KINDS), None)
    if start is None:
        return Timeline(None, None, None, None,
                        end.at_ms if end else None, end.kind if end else None,
                        end.reason if end else None, ())
    vcpu = start.vcpu if start.vcpu is not None else 1
    memory = start.memory_mib if start.memory_mib is not None else 0
    end_ms = end.at_ms if end else None
    if end_ms is not None and end_ms < start.at_ms:
        end_ms = start.at_ms  # an end stamped before the start bills nothing
    segments: list[Segment] = []
    cursor = start.at_ms
    for event in ordered:
        if event.kind != "updated":
            continue
        at = max(event.at_ms, start.at_ms)
        if end_ms is not None and at >= end_ms:
            break
        new_vcpu = event.vcpu if event.vcpu is not None else vcpu
        new_memory = event.memory_mib if event.memory_mib is not None else memory
        if at > cursor and (new_vcpu, new_memory) != (vcpu, memory):
            segments.append(Segment(cursor, at, vcpu, memory))
            cursor = at
        vcpu, memory = new_vcpu, new_memory
    segments.append(Segment(cursor, end_ms, vcpu, memory))
    merged = _merge(segments)
    first = merged[0] if merged else segments[0]
    return Timeline(
        start.at_ms, start.kind, first.vcpu, first.memory_mib, end_ms,
        end.kind if end else None, end.reason if end else None, merged,
    )


def _merge(segments: Sequence[Segment]) -> tuple[Segment, ...]:
    """Join neighbours with equal allocation and drop empty stretches."""
    out: list[Segment] = []
    for seg in segments:
        if seg.end_ms is not None and seg.end_ms <= seg.start_ms:
            continue
        if out and (out[-1].vcpu, out[-1].memory_mib) == (seg.vcpu, seg.memory_mib):
            out[-1] = Segment(out[-1].start_ms, seg.end_ms, seg.vcpu, seg.memory_mib)
        else:
            out.append(seg)
    return tuple(out)


def effective_end(
    true_end_ms: int | None, last_event_ms: int | None, now_ms: int, stale_after_ms: int
) -> tuple[int | None, bool]:
    """(end, running): where billing stops for an execution, and whether it still runs.

    A true end always wins. Without one, the execution runs while its newest event is less
    than `stale_after` old (end None: it accrues up to whatever "now" the reader uses); after
    that it ended at its newest event.
    """
    if true_end_ms is not None:
        return true_end_ms, False
    if last_event_ms is None:
        return None, True
    if now_ms - last_event_ms < stale_after_ms:
        return None, True
    return last_event_ms, False


def integrate(
    segments: Iterable[Segment], end_ms: int | None, window_start_ms: int, window_end_ms: int
) -> Usage:
    """Usage of the segments inside [window_start, window_end), the execution ending at
    `end_ms` (None: still running, so the window's end bounds it)."""
    vcpu_ms = 0
    mib_ms = 0
    for seg in segments:
        seg_end = seg.end_ms if seg.end_ms is not None else end_ms
        if seg_end is None:
            seg_end = window_end_ms
        elif end_ms is not None:
            seg_end = min(seg_end, end_ms)
        lo = max(seg.start_ms, window_start_ms)
        hi = min(seg_end, window_end_ms)
        if hi > lo:
            duration = hi - lo
            vcpu_ms += seg.vcpu * duration
            mib_ms += seg.memory_mib * duration
    return Usage(vcpu_ms, mib_ms)


def split_points(start_ms: int, end_ms: int, boundaries: Iterable[int]) -> list[tuple[int, int]]:
    """Cut [start, end) at the given boundaries (e.g. month starts) into consecutive pieces."""
    cuts = sorted({b for b in boundaries if start_ms < b < end_ms})
    points = [start_ms, *cuts, end_ms]
    return [(points[i], points[i + 1]) for i in range(len(points) - 1)]
