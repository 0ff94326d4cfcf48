"""Money and exact quantities: `Decimal` everywhere, rounded half-up to the minor unit once.

The one constructor `money()` turns strings and integers into amounts; floats are refused so
that binary fractions never enter a bill.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext

# Usage and prices multiply into long exact decimals; 60 digits never round them.
EXACT = Context(prec=60)

MINOR_UNITS: dict[str, int] = {"usd": 2, "eur": 2, "gbp": 2, "jpy": 0}

MS_PER_SECOND = 1000
MIB_PER_GIB = 1024


def decimal(value: Decimal | int | str) -> Decimal:
    """An exact `Decimal` from a string, int or Decimal; floats are a bug and raise."""
    if isinstance(value, float):  # pragma: no cover - defensive; typing forbids it
        raise TypeError("floats are not money: pass a string or Decimal")
    if isinstance(value, bool):
        raise TypeError("booleans are not money")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return result


def minor_unit(currency: str) -> Decimal:
    """The smallest unit of a currency as a quantum, e.g. Decimal('0.01') for usd."""
    digits = MINOR_UNITS.get(currency.lower(), 2)
    return Decimal(1).scaleb(-digits)


def round_minor(amount: Decimal, currency: str = "usd") -> Decimal:
    """Round half-up to the currency's minor unit: the only rounding a bill ever sees."""
    with localcontext(EXACT):
        return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)


def mul(a: Decimal, b: Decimal | int) -> Decimal:
    """Exact product (60 significant digits is far beyond any bill)."""
    with localcontext(EXACT):
        return a * b


def add(*amounts: Decimal) -> Decimal:
    """Exact sum."""
    with localcontext(EXACT):
        total = Decimal(0)
        for amount in amounts:
            total += amount
        return total


def div(a: Decimal | int, b: Decimal | int) -> Decimal:
    """Exact quotient where it terminates (ours always do: powers of 2 and 5)."""
    with localcontext(EXACT):
        return Decimal(a) / Decimal(b)


def fmt(amount: Decimal) -> str:
    """A plain decimal string without exponent or trailing zeros ('0' for zero)."""
    if amount == 0:
        return "0"
    text = format(amount.normalize(), "f")
    return text


def fmt_minor(amount: Decimal, currency: str = "usd") -> str:
    """A rounded amount with exactly the currency's minor digits, e.g. '151.37'."""
    return format(round_minor(amount, currency), "f")


def vcpu_seconds(vcpu_ms: int) -> Decimal:
    """vCPU-milliseconds as exact vCPU-seconds."""
    return div(vcpu_ms, MS_PER_SECOND)


def gib_seconds(mib_ms: int) -> Decimal:
    """MiB-milliseconds as exact GiB-seconds (terminating: 1024000 = 2^13 * 5^3)."""
    return div(mib_ms, MS_PER_SECOND * MIB_PER_GIB)


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """Prices per vCPU-second and per GiB-second, in one currency."""

    vcpu_second: Decimal
    gib_second: Decimal
    currency: str = "usd"

    def cost(self, vcpu_ms: int, mib_ms: int) -> Decimal:
        """Exact, unrounded cost of integer usage."""
        return add(
            mul(self.vcpu_second, vcpu_seconds(vcpu_ms)),
            mul(self.gib_second, gib_seconds(mib_ms)),
        )
