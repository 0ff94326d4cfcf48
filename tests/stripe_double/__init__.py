"""A Stripe test double: a real local HTTP server speaking Stripe's v1 wire format.

Tests and benchmarks point the official `stripe` package at it (there is no network here);
see `tests/stripe_double/server.py` for what it emulates and how to drive it.

The re-exports below are resolved lazily: importing `server` eagerly here would make
`python -m tests.stripe_double.server` load the module twice (once as a package member, once
as `__main__`), which runpy warns about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.stripe_double.server import (
        ApiError,
        Fault,
        RequestRecord,
        SignedEvent,
        StripeDouble,
        WebhookDelivery,
        sign_payload,
    )

__all__ = [
    "ApiError",
    "Fault",
    "RequestRecord",
    "SignedEvent",
    "StripeDouble",
    "WebhookDelivery",
    "sign_payload",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tests.stripe_double import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
