"""Plans: list, read, new versions from a date, and quotes for a described workload."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from billing.core.rating import quote
from billing.plans import service
from billing.plans.models import PlanVersion
from metering.api.deps import PrincipalDep, SessionDep, aware
from metering.core.clock import rfc3339, utc_now
from metering.core.money import fmt, fmt_minor
from metering.errors import BadRequest

router = APIRouter(tags=["plans"])


class LimitsOut(BaseModel):
    """A plan's limits (also a team's effective limits)."""

    max_execution_s: int
    concurrency: int
    starts_per_second: int
    max_vcpu: int
    max_memory_mib: int
    max_disk_mib: int


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


class PlanOut(BaseModel):
    code: str
    name: str
    current: PlanVersionOut
    versions: list[PlanVersionOut]


class PlanPage(BaseModel):
    data: list[PlanOut]
    next_cursor: str | None


def version_out(v: PlanVersion) -> dict[str, Any]:
    return {
        "id": v.id, "effective_at": rfc3339(v.effective_at), "currency": v.currency,
        "monthly_fee": fmt_minor(v.monthly_fee), "one_time_credit": fmt_minor(v.one_time_credit),
        "credit_enforced": v.credit_enforced,
        "minimum_commitment": fmt_minor(v.minimum_commitment),
        "vcpu_second_price": fmt(v.vcpu_second_price),
        "gib_second_price": fmt(v.gib_second_price), "max_execution_s": v.max_execution_s,
        "concurrency": v.concurrency, "starts_per_second": v.starts_per_second,
        "max_vcpu": v.max_vcpu, "max_memory_mib": v.max_memory_mib,
        "max_disk_mib": v.max_disk_mib,
    }


def plan_out(session: Any, code: str) -> dict[str, Any]:
    plan, versions = service.get_plan(session, code)
    now = utc_now()
    current = [v for v in versions if v.effective_at <= now] or versions[:1]
    return {"code": plan.code, "name": plan.name, "current": version_out(current[-1]),
            "versions": [version_out(v) for v in versions]}


@router.get("/v1/plans", response_model=PlanPage)
def list_plans(session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Every plan with the version in force now and all its versions."""
    from billing.plans import repository

    return {"data": [plan_out(session, p.code) for p in repository.plans(session)],
            "next_cursor": None}


@router.get("/v1/plans/{code}", response_model=PlanOut)
def get_plan(code: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return plan_out(session, code)


class PlanVersionIn(BaseModel):
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
    max_execution_s: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=0)
    starts_per_second: int | None = Field(default=None, ge=0)
    max_vcpu: int | None = Field(default=None, ge=1)
    max_memory_mib: int | None = Field(default=None, ge=1)
    max_disk_mib: int | None = Field(default=None, ge=0)


@router.put("/v1/plans/{code}", response_model=PlanOut)
def put_plan(code: str, body: PlanVersionIn, session: SessionDep,
             principal: PrincipalDep) -> dict[str, Any]:
    """Add a version of the plan effective from `effective_at` (default now); fields not
    given carry over from the version in force then. Usage is priced by the version in force
    when it happened, so a version never changes what was already used before it."""
    principal.require("admin")
    effective_at = aware(body.effective_at, "effective_at") or utc_now()
    changes = body.model_dump(exclude_none=True, exclude={"name", "effective_at"})
    service.put_plan_version(session, code, body.name, effective_at, changes)
    return plan_out(session, code)


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


@router.get("/v1/plans/{code}/quote", response_model=QuoteOut)
def get_quote(
    code: str, session: SessionDep, principal: PrincipalDep,
    vcpu: Annotated[int, Query(ge=1, le=1024)],
    memory_mib: Annotated[int, Query(ge=1, le=16_777_216)],
    seconds: Annotated[Decimal, Query(gt=0, le=10**9)],
    runs: Annotated[int, Query(ge=1, le=10**9)] = 1,
) -> dict[str, Any]:
    """What a workload costs on the plan now, e.g. 2 vCPU, 1024 MiB, 30 s, 100,000 runs:
    usage at the plan's prices plus its monthly fee (a commitment is a minimum, not added)."""
    plan, versions = service.get_plan(session, code)
    now = utc_now()
    version = ([v for v in versions if v.effective_at <= now] or versions[:1])[-1]
    from metering.core.money import UnitPrices, add

    try:
        q = quote(vcpu, memory_mib, seconds, runs,
                  UnitPrices(version.vcpu_second_price, version.gib_second_price,
                             version.currency))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return {
        "plan": plan.code, "currency": version.currency, "vcpu": vcpu, "memory_mib": memory_mib,
        "seconds": fmt(seconds), "runs": runs, "vcpu_seconds": fmt(q.vcpu_seconds),
        "gib_seconds": fmt(q.gib_seconds), "vcpu_cost": fmt(q.vcpu_cost),
        "memory_cost": fmt(q.memory_cost), "usage_cost": fmt_minor(q.total),
        "monthly_fee": fmt_minor(version.monthly_fee),
        "total": fmt_minor(add(q.total, version.monthly_fee)),
    }
