"""Plans as the API shows and takes them; the six limit fields are declared here once for
the HTTP edge (`LimitsOut` answered, `LimitsPatch` taken) and reused by teams' overrides."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from billing.plans.models import PlanVersion
from metering.core.clock import rfc3339
from metering.core.limits import PlanLimits
from metering.core.money import fmt, fmt_minor


class LimitsOut(BaseModel):
    """A plan's limits (also a team's effective limits)."""

    max_execution_s: int
    concurrency: int
    starts_per_second: int
    max_vcpu: int
    max_memory_mib: int
    max_disk_mib: int

    @classmethod
    def of(cls, limits: PlanLimits) -> LimitsOut:
        return cls.model_validate(limits.as_dict())


class LimitsPatch(BaseModel):
    """Some of the six limits (absent: unchanged)."""

    max_execution_s: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=0)
    starts_per_second: int | None = Field(default=None, ge=0)
    max_vcpu: int | None = Field(default=None, ge=1)
    max_memory_mib: int | None = Field(default=None, ge=1)
    max_disk_mib: int | None = Field(default=None, ge=0)


class PlanVersionOut(LimitsOut):
    id: str
    effective_at: str
    currency: str
    monthly_fee: str
    one_time_credit: str
    credit_enforced: bool
    minimum_commitment: str
    vcpu_second_price: str
    gib_second_price: str

    @classmethod
    def of_version(cls, v: PlanVersion) -> PlanVersionOut:
        return cls(
            id=v.id, effective_at=rfc3339(v.effective_at), currency=v.currency,
            monthly_fee=fmt_minor(v.monthly_fee), one_time_credit=fmt_minor(v.one_time_credit),
            credit_enforced=v.credit_enforced,
            minimum_commitment=fmt_minor(v.minimum_commitment),
            vcpu_second_price=fmt(v.vcpu_second_price),
            gib_second_price=fmt(v.gib_second_price), max_execution_s=v.max_execution_s,
            concurrency=v.concurrency, starts_per_second=v.starts_per_second,
            max_vcpu=v.max_vcpu, max_memory_mib=v.max_memory_mib, max_disk_mib=v.max_disk_mib)


class PlanOut(BaseModel):
    code: str
    name: str
    current: PlanVersionOut
    versions: list[PlanVersionOut]


class PlanPage(BaseModel):
    data: list[PlanOut]
    next_cursor: str | None


class PlanVersionIn(LimitsPatch):
    model_config = {"json_schema_extra": {"example": {
        "effective_at": "2026-12-01T00:00:00Z", "vcpu_second_price": "0.000012",
        "concurrency": 150}}}

    name: str | None = Field(default=None, max_length=200)
    effective_at: datetime | None = None
    monthly_fee: Decimal | None = Field(default=None, ge=0)
    one_time_credit: Decimal | None = Field(default=None, ge=0)
    credit_enforced: bool | None = None
    minimum_commitment: Decimal | None = Field(default=None, ge=0)
    vcpu_second_price: Decimal | None = Field(default=None, ge=0)
    gib_second_price: Decimal | None = Field(default=None, ge=0)


class QuoteOut(BaseModel):
    plan: str
    currency: str
    vcpu: int
    memory_mib: int
    seconds: str
    runs: int
    vcpu_seconds: str
    gib_seconds: str
    vcpu_cost: str
    memory_cost: str
    usage_cost: str
    monthly_fee: str
    total: str
