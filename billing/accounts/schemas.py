"""Teams as finance and the dashboard see and send them: plan, limits, credits, balance."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from billing.plans.schemas import LimitsOut, LimitsPatch
from metering.core.limits import LimitField


class TeamOut(BaseModel):
    id: str
    name: str | None
    email: str | None
    plan: str
    credit_enforced: bool
    limits: LimitsOut
    spend_limit: str | None
    collection_method: str
    blocked: bool
    blocked_reason: str | None
    blocked_at: str | None
    auto_created: bool
    created_at: str


class TeamIn(BaseModel):
    model_config = {"json_schema_extra": {"example": {
        "name": "Acme", "email": "billing@acme.example", "plan": "pro",
        "effective_at": "2026-10-01T00:00:00Z", "spend_limit": "500"}}}

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    plan: str | None = Field(default=None, max_length=64)
    effective_at: datetime | None = None
    spend_limit: Decimal | None = Field(default=None, ge=0)
    collection_method: Literal["charge_automatically", "send_invoice"] | None = None


class CreditIn(BaseModel):
    model_config = {"json_schema_extra": {"example": {
        "amount": "25.00", "expires_at": "2027-01-01T00:00:00Z", "priority": 0,
        "reason": "launch promotion"}}}

    amount: Decimal = Field(gt=0, max_digits=20, decimal_places=6)
    expires_at: datetime | None = None
    priority: int = Field(default=0, ge=0, le=1000)
    reason: str | None = Field(default=None, max_length=500)


class GrantOut(BaseModel):
    id: str
    amount: str
    applied: str
    remaining: str
    priority: int
    granted_at: str
    expires_at: str | None
    reason: str | None
    kind: str


class GrantPage(BaseModel):
    data: list[GrantOut]
    next_cursor: str | None


class BalanceOut(BaseModel):
    team_id: str
    currency: str
    credit_granted: str
    credit_used: str
    credit_remaining: str
    credit_enforced: bool
    month_to_date_spend: str
    spend_limit: str | None
    burn_rate_per_hour: str
    projected_exhaustion_at: str | None
    as_of: str


class AddOnIn(BaseModel):
    field: LimitField
    delta: int = Field(gt=0, le=10**6)
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class OverrideIn(LimitsPatch):
    starts_at: datetime | None = None
    ends_at: datetime | None = None
