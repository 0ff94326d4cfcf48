"""Notifications: which credit thresholds a usage increase newly reaches. Pure.

`credit_threshold_crossed` reports each percentage of a grant that a usage increase newly
reaches (used >= granted * pct / 100), so that splitting one increase into steps reports every
threshold exactly once in total.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from metering.core.money import mul

__all__ = ["credit_threshold_crossed"]


def credit_threshold_crossed(
    granted: Decimal,
    used_before: Decimal,
    used_after: Decimal,
    thresholds: Sequence[int] = (50, 80, 100),
) -> list[int]:
    """The percentages of `granted` that usage newly reaches going from before to after.

    A threshold p is reached when used >= granted * p / 100; it is newly reached when that holds
    after and not before. Usage is expected never to decrease between calls; if it does, nothing
    is reported (a dip and re-rise would otherwise announce a threshold twice, so callers should
    still remember what they announced). Nothing is reported for a zero or negative grant, where
    percentages mean nothing. Returned ascending, each threshold once.
    """
    if granted <= 0 or used_after <= used_before:
        return []
    # Compare used * 100 with granted * p: exact, no division.
    before = mul(used_before, 100)
    after = mul(used_after, 100)
    crossed: list[int] = []
    for pct in sorted(set(thresholds)):
        mark = mul(granted, pct)
        if before < mark <= after:
            crossed.append(pct)
    return crossed
