"""The liveness pass is paced: a run that took long holds the next one back, so a pass whose
cost grows with the fleet takes at most its duty of the time."""

from __future__ import annotations

import pytest

from metering.ingest import jobs


def test_a_slow_run_holds_the_next_back_for_three_times_its_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("metering.ingest.jobs.time.monotonic", lambda: now[0])
    pacer = jobs.Pacer(duty=0.25)
    assert pacer.due()  # never ran
    pacer.ran(started=now[0] - 2.0)  # a run of 2 s just ended
    now[0] += 5.9
    assert not pacer.due()
    now[0] += 0.1  # 6 s of rest = 3 x 2 s: a quarter of the time spent running
    assert pacer.due()
    pacer.ran(started=now[0] - 0.001)  # a quick run hardly holds the next back
    now[0] += 0.003
    assert pacer.due()
