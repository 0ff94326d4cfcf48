"""Projection: what running sandboxes cost per second and when credit runs out. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from metering.core.limits import require_aware
from metering.core.money import MIB_PER_GIB, UnitPrices, add, div, mul

__all__ = ["burn_rate_projection", "cost_rate_per_second"]


def cost_rate_per_second(allocations: Iterable[tuple[int, int]], prices: UnitPrices) -> Decimal:
    """What running sandboxes cost per second, from their (vcpu, memory_mib) allocations."""
    vcpu = 0
    memory_mib = 0
    for cpus, mib in allocations:
        vcpu += cpus
        memory_mib += mib
    return add(
        mul(prices.vcpu_second, vcpu),
        mul(prices.gib_second, div(memory_mib, MIB_PER_GIB)),
    )


_MICROSECONDS = Decimal(1_000_000)
_LATEST = datetime.max.replace(tzinfo=UTC)


def burn_rate_projection(
    credit_remaining: Decimal, rate_per_second: Decimal, now: datetime
) -> datetime | None:
    """When credit runs out at the current burn rate; None if it never does.

    Already exhausted (<= 0) -> `now`. No burn (rate <= 0) -> None. Otherwise the first
    microsecond at which remaining - rate * elapsed <= 0 (rounded up, matching the kill rule
    "credit <= 0"). A date beyond the calendar's end is reported as None: never, in practice.
    """
    require_aware("now", now)
    if credit_remaining <= 0:
        return now
    if rate_per_second <= 0:
        return None
    micros = mul(div(credit_remaining, rate_per_second), _MICROSECONDS)
    whole = int(micros.to_integral_value(rounding=ROUND_CEILING))
    room = (_LATEST - now) // timedelta(microseconds=1)
    if whole > room:
        return None
    return now + timedelta(microseconds=whole)
