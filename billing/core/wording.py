"""How an invoice speaks to the customer: units, prices with their currency, service periods.

Pure text functions shared by rating (line descriptions), the API, the CLI, the CSV exports,
the dashboard and the Stripe invoice items, so that every reader sees the same words. No
internal id ever appears here: plan versions, price versions and grant ids stay in metadata.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from metering.core.clock import parse_period
from metering.core.money import MINOR_UNITS

# The typography of an invoice (written as escapes: the linter takes them for look-alikes).
TIMES = "\u00d7"  # multiplication sign
DASH = "\u2013"  # en dash, between the days of a span

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}

UNITS = {"usage_vcpu": "vCPU-s", "usage_memory": "GiB-s", "adjustment_vcpu": "vCPU-s",
         "adjustment_memory": "GiB-s"}
RESOURCES = {"usage_vcpu": "vCPU time", "usage_memory": "Memory",
             "adjustment_vcpu": "vCPU time", "adjustment_memory": "Memory"}


def grouped(value: Decimal) -> str:
    """An exact decimal with thousands grouped and no trailing zeros: `3,501,691.364`."""
    amount = value.normalize()
    if amount == 0:
        return "0"
    text = format(abs(amount), "f")
    whole, _, fraction = text.partition(".")
    body = f"{int(whole):,}" + (f".{fraction}" if fraction else "")
    return ("-" if amount < 0 else "") + body


def money_text(value: Decimal, currency: str) -> str:
    """An exact amount with its currency: `$0.000014`, `$3,000.00`, `12.50 CHF`: at least the
    currency's minor digits, and every digit a finer price has."""
    exponent = value.normalize().as_tuple().exponent
    digits = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    places = max(digits, MINOR_UNITS.get(currency.lower(), 2))
    body = format(abs(value), f",.{places}f")
    sign = "-" if value < 0 else ""
    symbol = SYMBOLS.get(currency.lower())
    return f"{sign}{symbol}{body}" if symbol else f"{sign}{body} {currency.upper()}"


def _day(moment: datetime, with_year: bool) -> str:
    text = f"{moment:%b} {moment.day}"
    return f"{text}, {moment.year}" if with_year else text


def span_text(start: datetime, end: datetime) -> str:
    """A service period [start, end) as the days it covers: `Nov 1 - Nov 30, 2026` (with an
    en dash). The end is exclusive, so a period ending at midnight ends the day before."""
    last = end - timedelta(milliseconds=1) if end > start else start
    if start.date() == last.date():
        return _day(start, True)
    if start.year == last.year:
        return f"{_day(start, False)} {DASH} {_day(last, True)}"
    return f"{_day(start, True)} {DASH} {_day(last, True)}"


def month_text(period: str) -> str:
    """`2026-10` as `October 2026`."""
    start, _ = parse_period(period)
    return f"{start:%B %Y}"


def plan_name(plan_code: str) -> str:
    """A plan's code as the customer reads it: `pro` is `Pro`, `team_plus` `Team Plus`."""
    return " ".join(part.capitalize() for part in plan_code.replace("-", "_").split("_") if part)


def usage_text(kind: str, quantity: Decimal, unit_price: Decimal, currency: str) -> str:
    """`vCPU time · 3,501,691.364 vCPU-s x $0.000014` (a multiplication sign for the x)."""
    return (f"{RESOURCES[kind]} · {grouped(quantity)} {UNITS[kind]} {TIMES} "
            f"{money_text(unit_price, currency)}")


def credit_label(kind: str, reason: str | None) -> str:
    """What a grant is called on an invoice: a plan's one-time grant is the welcome credit."""
    if kind == "plan":
        return "Welcome credit"
    if kind == "carry_forward":
        return "Credit carried forward"
    return reason.strip() if reason and reason.strip() else "Credit"
