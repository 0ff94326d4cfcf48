"""What the Stripe webhook answers Stripe."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WebhookReceipt(BaseModel):
    received: bool
    id: str = Field(description="the Stripe event's id")
    duplicate: bool
    outcome: str = Field(description="what handling it did, e.g. `applied`, `ignored`, "
                                     "`duplicate`, `pending` (stored; retried by the worker)")
