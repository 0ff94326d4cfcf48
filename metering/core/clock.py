"""The one clock of the service: timezone-aware UTC, and millisecond conversions.

Every module asks `utc_now()` for the time so that tests and the simulated orchestrator can
move one clock instead of many.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH = _EPOCH
_offset = timedelta(0)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (shifted by `set_offset` in simulations)."""
    return datetime.now(UTC) + _offset


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
