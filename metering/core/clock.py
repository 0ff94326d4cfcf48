"""The one clock of the service: timezone-aware UTC, and millisecond conversions.

Every module asks `utc_now()` for the time so that tests and the simulated orchestrator can
move one clock instead of many.

Simulation clock. `METERING_SIM_CLOCK="<real anchor>,<simulated anchor>,<rate>"` (unix seconds,
unix seconds, simulated seconds per real second), given to `configure` at start-up (the
application reads it from its settings, `metering.config.configure_clock`), makes
`utc_now()` answer ``simulated anchor + (real now - real anchor) * rate``. Every process started
with the same value (the API, any number of workers, a test's simulated orchestrator through
`SimClock.now`) then shares one simulated clock: a rate of 100 plays an hour in 36 s, and a rate
of 1 with a later simulated anchor is a process that lives some minutes in the future (a worker
restarted after the leases of a crashed one ran out). Only the service's own notion of time
moves: the intervals of the worker's jobs, HTTP timeouts and the database's `now()` stay real,
so durations the service measures on its clock (leases, grace periods, backoffs) shrink by the
rate. Simulations and tests only; unset in production.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH = _EPOCH
_offset = timedelta(0)
SIM_CLOCK_ENV = "METERING_SIM_CLOCK"


@dataclass(frozen=True, slots=True)
class SimClock:
    """A simulated clock: at real unix time `real_anchor` it reads `sim_anchor`, and it runs
    `rate` times faster than real time."""

    real_anchor_us: int  # unix microseconds
    sim_anchor_us: int  # unix microseconds
    rate: float  # float-ok: a simulation's speed, never money or usage

    @classmethod
    def parse(cls, value: str) -> SimClock:
        """`"<real anchor>,<simulated anchor>,<rate>"`, anchors in unix seconds."""
        try:
            real_s, sim_s, rate_s = (part.strip() for part in value.split(","))
            real, sim, rate = float(real_s), float(sim_s), float(rate_s)  # float-ok
        except ValueError as exc:
            raise ValueError(f"{SIM_CLOCK_ENV} must be '<real anchor epoch s>,"
                             f"<simulated anchor epoch s>,<rate>', got {value!r}") from exc
        if not rate > 0:
            raise ValueError(f"{SIM_CLOCK_ENV}: the rate must be positive, got {rate_s!r}")
        return cls(round(real * 1_000_000), round(sim * 1_000_000), rate)

    @classmethod
    def starting(cls, sim_start: datetime, rate: float = 1.0,  # float-ok
                 real_start: float | None = None) -> SimClock:  # float-ok: unix seconds
        """The clock that reads `sim_start` at real unix time `real_start` (default now)."""
        real = time.time() if real_start is None else real_start
        return cls(round(real * 1_000_000), to_ms(sim_start) * 1000, rate)

    def setting(self) -> str:
        """The `METERING_SIM_CLOCK` value of this clock, for processes to share it."""
        return (f"{self.real_anchor_us / 1_000_000:.6f},{self.sim_anchor_us / 1_000_000:.6f},"
                f"{self.rate!r}")

    def now(self) -> datetime:
        """The simulated time now."""
        return self.at_real_us(time.time_ns() // 1000)

    def at_real_us(self, real_us: int) -> datetime:
        """The simulated time at real unix time `real_us` (microseconds)."""
        elapsed = real_us - self.real_anchor_us
        if self.rate != 1:
            elapsed = round(elapsed * self.rate)
        return _EPOCH + timedelta(microseconds=self.sim_anchor_us + elapsed)


_sim: SimClock | None = None


def configure(sim: SimClock | None) -> None:
    """Run this process on a simulated clock (None: the real one). Called once at start-up."""
    global _sim  # noqa: PLW0603 - the single process-wide clock
    _sim = sim


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (simulated under `METERING_SIM_CLOCK`, shifted by
    `set_offset` in tests)."""
    sim = _sim
    if sim is None:
        return datetime.now(UTC) + _offset
    return sim.now() + _offset


def set_offset(offset: timedelta) -> None:
    """Shift the clock; only simulations and tests call this."""
    global _offset  # noqa: PLW0603 - the single process-wide clock
    _offset = offset


def to_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch, truncated (finer digits never bill)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: times must be timezone-aware UTC")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    """The UTC datetime of a millisecond timestamp."""
    return _EPOCH + timedelta(milliseconds=ms)


def month_start(moment: datetime) -> datetime:
    """The first instant of the UTC calendar month containing `moment`."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(moment: datetime) -> datetime:
    """The first instant of the UTC calendar month after the one containing `moment`."""
    start = month_start(moment)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def parse_period(period: str) -> tuple[datetime, datetime]:
    """`"2026-10"` -> [start, end) of that UTC calendar month."""
    try:
        year_s, month_s = period.split("-")
        start = datetime(int(year_s), int(month_s), 1, tzinfo=UTC)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"period must look like 2026-10, got {period!r}") from exc
    if len(year_s) != 4 or len(month_s) != 2:
        raise ValueError(f"period must look like 2026-10, got {period!r}")
    return start, next_month_start(start)


def format_period(moment: datetime) -> str:
    """The `YYYY-MM` period containing `moment`."""
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a `Z`."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
