"""Plans as the API shows and takes them. The limit fields at the HTTP edge (`LimitsOut`
answered, `LimitsPatch` taken, reused by teams' overrides) are made from the core's
`PlanLimits`, where each limit is declared once."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, create_model

from billing.plans.models import PlanVersion
from metering.core.clock import rfc3339
from metering.core.limits import LIMIT_FIELDS, LIMIT_MINIMUMS, PlanLimits
from metering.core.money import fmt, fmt_minor


class _LimitsOutBase(BaseModel):
    @classmethod
    def of(cls, limits: PlanLimits) -> LimitsOut:
        return LimitsOut.model_validate(limits.as_dict())


def _limit_fields(*, patch: bool) -> dict[str, Any]:
    if not patch:
        return {name: (int, ...) for name in LIMIT_FIELDS}
    return {name: (int | None, Field(default=None, ge=LIMIT_MINIMUMS[name]))
            for name in LIMIT_FIELDS}


if TYPE_CHECKING:  # mypy sees the classes; their fields are `PlanLimits`' (built below)
    class LimitsOut(_LimitsOutBase):
        """A plan's limits (also a team's effective limits)."""

    class LimitsPatch(BaseModel):
        """Some of the six limits (absent: unchanged)."""
else:
    LimitsOut = create_model(
        "LimitsOut", __base__=_LimitsOutBase, __module__=__name__,
        __doc__="A plan's limits (also a team's effective limits).",
        **_limit_fields(patch=False))
    LimitsPatch = create_model(
        "LimitsPatch", __module__=__name__, __doc__="Some of the six limits (absent: unchanged).",
        **_limit_fields(patch=True))


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
        return cls.model_validate({
            **v.limits.as_dict(), "id": v.id, "effective_at": rfc3339(v.effective_at),
            "currency": v.currency, "monthly_fee": fmt_minor(v.monthly_fee),
            "one_time_credit": fmt_minor(v.one_time_credit),
            "credit_enforced": v.credit_enforced,
            "minimum_commitment": fmt_minor(v.minimum_commitment),
            "vcpu_second_price": fmt(v.vcpu_second_price),
            "gib_second_price": fmt(v.gib_second_price)})


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
