"""The pure interval integration: arrival order, duplicates and window cuts never change usage."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from metering.core.usage import (
    LifecycleEvent,
    Usage,
    build_timeline,
    effective_end,
    integrate,
    split_points,
)


@st.composite
def event_sets(draw: st.DrawFn) -> list[LifecycleEvent]:
    start = draw(st.integers(0, 10_000))
    events = [LifecycleEvent("created", start, draw(st.integers(1, 8)), draw(st.integers(1, 4096)), "s", "c")]
    for i in range(draw(st.integers(0, 5))):
        events.append(LifecycleEvent("updated", draw(st.integers(start - 100, start + 50_000)),
                                     draw(st.one_of(st.none(), st.integers(1, 8))),
                                     draw(st.integers(1, 4096)), "s", f"u{i}"))
    if draw(st.booleans()):
        events.append(LifecycleEvent("paused", draw(st.integers(start - 10, start + 60_000)), source="s", event_id="p"))
    if draw(st.booleans()):
        events.append(LifecycleEvent("killed", draw(st.integers(start - 10, start + 60_000)), source="s", event_id="k"))
    return events


def usage_of(events: list[LifecycleEvent], lo: int, hi: int) -> Usage:
    timeline = build_timeline(events)
    last = max(e.at_ms for e in events)
    end, _ = effective_end(timeline.true_end_ms, last, now_ms=10**12, stale_after_ms=60_000)
    return integrate(timeline.segments, end, lo, hi)


@given(event_sets(), st.randoms(use_true_random=False), st.integers(0, 3))
def test_order_and_duplicates_do_not_matter(events: list[LifecycleEvent], rnd: random.Random, dups: int) -> None:
    shuffled = events + [rnd.choice(events) for _ in range(dups)]
    rnd.shuffle(shuffled)
    assert usage_of(shuffled, -(10**9), 10**9) == usage_of(events, -(10**9), 10**9)


@given(event_sets(), st.lists(st.integers(-1000, 70_000), max_size=6))
def test_any_cut_of_the_window_adds_up(events: list[LifecycleEvent], cuts: list[int]) -> None:
    lo, hi = -2000, 80_000
    whole = usage_of(events, lo, hi)
    parts = [usage_of(events, a, b) for a, b in split_points(lo, hi, cuts)]
    total = Usage()
    for part in parts:
        total = total + part
    assert total == whole


@given(event_sets())
def test_usage_is_never_negative_and_stops_at_the_earliest_end(events: list[LifecycleEvent]) -> None:
    timeline = build_timeline(events)
    whole = usage_of(events, -(10**9), 10**9)
    assert whole.vcpu_ms >= 0 and whole.mib_ms >= 0
    ends = [e.at_ms for e in events if e.kind in ("paused", "killed")]
    if ends and timeline.start_ms is not None:
        assert timeline.true_end_ms == max(min(ends), timeline.start_ms)
        assert usage_of(events, timeline.true_end_ms, 10**9) == Usage()


def test_a_worked_example() -> None:
    events = [LifecycleEvent("created", 0, 2, 1024), LifecycleEvent("updated", 30_000, 4, None),
              LifecycleEvent("killed", 60_000)]
    assert usage_of(events, 0, 10**6) == Usage(vcpu_ms=180_000, mib_ms=61_440_000)


def test_stale_rule() -> None:
    assert effective_end(None, 1000, now_ms=1000 + 59_999, stale_after_ms=60_000) == (None, True)
    assert effective_end(None, 1000, now_ms=1000 + 60_000, stale_after_ms=60_000) == (1000, False)
    assert effective_end(5000, 9000, now_ms=10**9, stale_after_ms=60_000) == (5000, False)
