"""The pure part of the Stripe sync: no database, no network, no clock.

What it decides:

* Amounts. A line's `amount` is already rounded to the currency's minor unit by rating; here it
  becomes an exact integer of minor units (`to_minor`). A value that is not a whole number of
  minor units is refused, never rounded again: it would be a bug upstream.
* Splitting. Stripe takes at most 250 invoice items per invoice. An invoice with more lines is
  sent as `ceil(n / 250)` Stripe invoices ("parts", numbered from 0), each with at most
  `ceil(n / parts)` items. Charges (amount >= 0) are placed largest first on the part with the
  smallest running total; reductions (credits, negative adjustments) then go most negative
  first onto the part with the largest running total; within a part, items keep our line order.
  That keeps every part's total >= 0 whenever the invoice's is (Stripe cannot charge a negative
  invoice, and a part with a negative total would turn into customer balance). If some part
  would still be negative the plan is refused with a clear reason (sync_failed). The plan is a
  pure function of the finalized (immutable) lines, so a re-run rebuilds the same parts and
  therefore the same idempotency keys.
* Idempotency keys, from our ids only: `customer:<team>`, `inv:<id>:create`,
  `inv:<id>:item:<line position>`, `inv:<id>:finalize`, `inv:<id>:pay`, `inv:<id>:send`; parts
  after the first insert `:part<k>` after the id (`inv:<id>:part1:create`). An item's key needs
  no part: positions are unique within our invoice.
* Backoff: `base * 2^(attempt-1)` capped, and never sooner than a 429's Retry-After.
* Our invoice's state from its parts' Stripe states (`invoice_outcome`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, localcontext

from metering.core.money import EXACT, MINOR_UNITS

MAX_ITEMS_PER_INVOICE = 250


class PlanError(ValueError):
    """The invoice cannot be sent as it is (e.g. a part would have a negative total)."""


def to_minor(amount: Decimal, currency: str) -> int:
    """An amount as an exact integer of the currency's minor units (usd 1.23 -> 123)."""
    digits = MINOR_UNITS.get(currency.lower(), 2)
    with localcontext(EXACT):
        scaled = amount.scaleb(digits)
        if scaled != scaled.to_integral_value():
            raise PlanError(f"{amount} {currency} is not a whole number of minor units")
        return int(scaled)


@dataclass(frozen=True, slots=True)
class LineToSend:
    position: int
    kind: str
    description: str
    amount_minor: int
    service_start: datetime | None = None
    service_end: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)  # internal ids


@dataclass(frozen=True, slots=True)
class PartPlan:
    index: int
    count: int  # how many parts the invoice has
    lines: tuple[LineToSend, ...]

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)


def plan_parts(lines: Sequence[LineToSend],
               max_items: int = MAX_ITEMS_PER_INVOICE) -> tuple[PartPlan, ...]:
    """Assign lines to Stripe invoices (see the module docstring for the scheme)."""
    ordered = sorted(lines, key=lambda line: line.position)
    if len({line.position for line in ordered}) != len(ordered):
        raise PlanError("invoice lines have duplicate positions")
    if len(ordered) <= max_items:
        return (PartPlan(0, 1, tuple(ordered)),)
    count = math.ceil(len(ordered) / max_items)
    capacity = math.ceil(len(ordered) / count)
    bins: list[list[LineToSend]] = [[] for _ in range(count)]
    totals = [0] * count

    def place(line: LineToSend, prefer_largest: bool) -> None:
        open_bins = [i for i in range(count) if len(bins[i]) < capacity]
        sign = -1 if prefer_largest else 1
        target = min(open_bins, key=lambda i: (sign * totals[i], i))
        bins[target].append(line)
        totals[target] += line.amount_minor

    for line in sorted((x for x in ordered if x.amount_minor >= 0),
                       key=lambda x: (-x.amount_minor, x.position)):
        place(line, prefer_largest=False)
    for line in sorted((x for x in ordered if x.amount_minor < 0),
                       key=lambda x: (x.amount_minor, x.position)):
        place(line, prefer_largest=True)
    parts = tuple(PartPlan(i, count, tuple(sorted(b, key=lambda x: x.position)))
                  for i, b in enumerate(bins))
    negative = [p.index for p in parts if p.total_minor < 0]
    if negative:
        raise PlanError(f"cannot split {len(ordered)} lines into {count} Stripe invoices "
                        f"without a negative total (parts {negative})")
    return parts


def _prefix(invoice_id: str, part: int) -> str:
    return f"inv:{invoice_id}" if part == 0 else f"inv:{invoice_id}:part{part}"


def customer_key(team_id: str) -> str:
    return f"customer:{team_id}"


def create_key(invoice_id: str, part: int) -> str:
    return f"{_prefix(invoice_id, part)}:create"


def item_key(invoice_id: str, position: int) -> str:
    return f"inv:{invoice_id}:item:{position}"


def finalize_key(invoice_id: str, part: int) -> str:
    return f"{_prefix(invoice_id, part)}:finalize"


def collect_key(invoice_id: str, part: int, collection_method: str) -> str:
    action = "send" if collection_method == "send_invoice" else "pay"
    return f"{_prefix(invoice_id, part)}:{action}"


@dataclass(frozen=True, slots=True)
class Backoff:
    base: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=6)
    max_attempts: int = 10

    def next_attempt(self, now: datetime, attempts: int,
                     retry_after: float | None = None) -> datetime | None:  # float-ok
        """When to try again after `attempts` failed attempts; None once they are spent."""
        if attempts >= self.max_attempts:
            return None
        delay: timedelta = min(self.base * (2 ** max(attempts - 1, 0)), self.cap)
        if retry_after is not None:
            delay = max(delay, timedelta(seconds=retry_after))
        return now + delay


@dataclass(frozen=True, slots=True)
class PartState:
    """What we know of one Stripe invoice carrying (part of) our invoice."""

    stripe_status: str | None  # draft | open | paid | void | uncollectible
    payment_failed_at: datetime | None
    paid_at: datetime | None
    voided_at: datetime | None


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # synced | paid | payment_failed | void
    stripe_status: str | None
    paid_at: datetime | None = None
    payment_failed_at: datetime | None = None
    voided_at: datetime | None = None


def invoice_outcome(parts: Sequence[PartState]) -> Outcome:
    """Our invoice's state once every part is in Stripe: paid when every part is paid (void
    parts owe nothing), void when every part is void, payment_failed while any part has a
    failed payment and is still unpaid (uncollectible counts as failed), else synced."""
    statuses = [p.stripe_status for p in parts]
    summary = statuses[0] if len(set(statuses)) == 1 else next(
        (s for s in statuses if s not in ("paid", "void")), statuses[0])
    if all(s == "void" for s in statuses):
        voided = [p.voided_at for p in parts if p.voided_at is not None]
        return Outcome("void", summary, voided_at=max(voided, default=None))
    if all(s in ("paid", "void") for s in statuses):
        paid = [p.paid_at for p in parts if p.paid_at is not None]
        return Outcome("paid", summary, paid_at=max(paid, default=None))
    failed = [p.payment_failed_at for p in parts
              if p.stripe_status in ("open", "uncollectible") and p.payment_failed_at]
    if failed:
        return Outcome("payment_failed", summary, payment_failed_at=min(failed))
    return Outcome("synced", summary)
