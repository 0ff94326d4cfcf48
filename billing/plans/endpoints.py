"""Plans: list, read, new versions from a date, and quotes for a described workload."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query

from billing.plans import service
from billing.plans.schemas import PlanOut, PlanPage, PlanVersionIn, QuoteOut
from metering.api.deps import PrincipalDep, SessionDep, aware

router = APIRouter(tags=["plans"])


@router.get("/v1/plans", response_model=PlanPage)
def list_plans(session: SessionDep, principal: PrincipalDep) -> PlanPage:
    """Every plan with the version in force now and all its versions."""
    return service.plan_page(session)


@router.get("/v1/plans/{code}", response_model=PlanOut)
def get_plan(code: str, session: SessionDep, principal: PrincipalDep) -> PlanOut:
    return service.plan_out(session, code)


@router.put("/v1/plans/{code}", response_model=PlanOut)
def put_plan(code: str, body: PlanVersionIn, session: SessionDep,
             principal: PrincipalDep) -> PlanOut:
    """Add a version of the plan effective from `effective_at` (default now); fields not
    given carry over from the version in force then. Usage is priced by the version in force
    when it happened, so a version never changes what was already used before it."""
    principal.require("admin")
    return service.new_version(session, code, body, aware(body.effective_at, "effective_at"))


@router.get("/v1/plans/{code}/quote", response_model=QuoteOut)
def get_quote(
    code: str, session: SessionDep, principal: PrincipalDep,
    vcpu: Annotated[int, Query(ge=1, le=1024)],
    memory_mib: Annotated[int, Query(ge=1, le=16_777_216)],
    seconds: Annotated[Decimal, Query(gt=0, le=10**9)],
    runs: Annotated[int, Query(ge=1, le=10**9)] = 1,
) -> QuoteOut:
    """What a workload costs on the plan now, e.g. 2 vCPU, 1024 MiB, 30 s, 100,000 runs:
    usage at the plan's prices plus its monthly fee (a commitment is a minimum, not added)."""
    return service.workload_quote(session, code, vcpu, memory_mib, seconds, runs)
