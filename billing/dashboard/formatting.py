"""How figures read on the page: money, quantities, times and sizes, as display strings.

Pure and shared by the templates and the live JSON, so a figure looks the same before and
after a refresh. Display rounding happens here only; the exact decimal strings of the API
are what the figures come from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from billing.core.wording import grouped
from metering.core.money import minor_unit

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def _decimal(value: Decimal | str | int | None) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    try:
        return value if isinstance(value, Decimal) else Decimal(value)
    except InvalidOperation:
        return Decimal(0)


def _grouped(amount: Decimal, places: int) -> str:
    quantum = Decimal(1).scaleb(-places)
    return f"{amount.quantize(quantum, rounding=ROUND_HALF_UP):,.{places}f}"


def money(value: Decimal | str | int | None, currency: str = "usd", *,
          fine: bool = False) -> str:
    """`$1,234.56`. `fine`: sub-unit amounts (a running sandbox's cost so far) keep four
    decimals so that they visibly move; they are estimates, invoices round per line."""
    amount = _decimal(value)
    places = -minor_unit(currency).as_tuple().exponent  # type: ignore[operator]
    if fine and amount != 0 and abs(amount) < 1:
        places = max(places, 4)
    sign = "-" if amount < 0 else ""
    body = _grouped(abs(amount), int(places))
    symbol = SYMBOLS.get(currency.lower())
    return f"{sign}{symbol}{body}" if symbol else f"{sign}{body} {currency.upper()}"


def quantity(value: Decimal | str | int | None) -> str:
    """A usage figure: whole numbers from 1,000 up, one decimal from 10, two below."""
    amount = _decimal(value)
    magnitude = abs(amount)
    places = 0 if magnitude >= 1000 else 1 if magnitude >= 10 else 2
    if amount == 0:
        return "0"
    return _grouped(amount, places)


def exact(value: Decimal | str | int | None) -> str:
    """An exact quantity with thousands grouped and no trailing zeros: `1,673,065.4`
    (invoice lines: what was billed, to the last digit)."""
    return grouped(_decimal(value))


def parse_time(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def when(value: datetime | str | None) -> str:
    """`2026-11-03 10:15 UTC` (the service's times are UTC; so are the pages')."""
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def when_seconds(value: datetime | str | None) -> str:
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def duration(seconds: float | int | None) -> str:  # float-ok
    """`45 s`, `12 min 5 s`, `3 h 20 min`, `2 d 4 h`."""
    if seconds is None:
        return "—"
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def memory(mib: int | None) -> str:
    """`512 MiB`, `2 GiB`, `1.5 GiB`."""
    if mib is None:
        return "—"
    if mib >= 1024:
        gib = Decimal(mib) / 1024
        return f"{gib.normalize():f} GiB" if gib == gib.to_integral() else f"{gib:.1f} GiB"
    return f"{mib} MiB"


def bucket_label(start: datetime | str, granularity: str) -> str:
    """The axis label of a usage bucket: `14:00` for hours, `Nov 3` for days, `2026-11`."""
    moment = parse_time(start)
    assert moment is not None
    if granularity == "hour":
        return moment.strftime("%H:%M")
    if granularity == "day":
        return f"{moment:%b} {moment.day}"
    return moment.strftime("%Y-%m")
