"""`METERING_SIM_CLOCK`: the simulated clock processes share (see `metering.core.clock`)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from metering.core.clock import SIM_CLOCK_ENV, SimClock

START = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)


def test_a_sim_clock_reads_its_anchor_then_runs_at_its_rate() -> None:
    clock = SimClock.starting(START, 100, real_start=1_800_000_000.25)
    assert clock.at_real_us(1_800_000_000_250_000) == START
    assert clock.at_real_us(1_800_000_001_250_000) == START + timedelta(seconds=100)
    assert clock.at_real_us(1_800_000_000_250_001) == START + timedelta(microseconds=100)
    assert clock.at_real_us(1_799_999_999_250_000) == START - timedelta(seconds=100)
    # The setting other processes are started with describes the same clock.
    assert SimClock.parse(clock.setting()) == clock
    assert SimClock.parse(" 1800000000.25 , 1793489400 , 100 ") == clock


@pytest.mark.parametrize("value", ["", "1,2", "1,2,3,4", "a,2,3", "1,2,0", "1,2,-1"])
def test_a_malformed_setting_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=SIM_CLOCK_ENV):
        SimClock.parse(value)


def test_a_process_started_with_the_setting_runs_on_the_simulated_clock() -> None:
    clock = SimClock.starting(START, 1)
    # What every process of the service does at start-up (`metering ...`, the app factory).
    code = ("from metering.config import configure_clock; configure_clock(); "
            "from metering.core.clock import utc_now; print(utc_now().isoformat())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, SIM_CLOCK_ENV: clock.setting()})
    seen = datetime.fromisoformat(out.stdout.strip())
    assert START <= seen < START + timedelta(seconds=30)
