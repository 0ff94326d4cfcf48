"""`POST /v1/admissions`: the orchestrator asks before each sandbox start."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from metering.admissions import service
from metering.api.deps import PrincipalDep, SessionDep, SettingsDep
from metering.core.clock import from_ms, to_ms, utc_now
from metering.core.limits import AdmissionRequest

router = APIRouter(tags=["admissions"])


class AdmissionIn(BaseModel):
    team_id: str = Field(min_length=1, max_length=128)
    sandbox_id: str = Field(min_length=1, max_length=256)
    vcpu: int = Field(ge=1, le=1024)
    memory_mib: int = Field(ge=1, le=16_777_216)
    disk_mib: int | None = Field(default=None, ge=1, le=2**31 - 1)
    timeout_s: int | None = Field(default=None, ge=1, le=2**31 - 1)


class AdmissionOut(BaseModel):
    admitted: bool
    lease_id: str | None = None
    max_duration_s: int | None = None
    expires_at: str | None = None
    reason: str | None = None
    limit: int | str | None = None
    current: int | str | None = None
    message: str | None = None


REFUSALS: dict[int | str, dict[str, Any]] = {
    402: {"model": AdmissionOut, "description": "credit_exhausted, spend_limit_reached, "
          "team_blocked"},
    403: {"model": AdmissionOut, "description": "resources_exceed_plan, duration_exceeds_plan"},
    429: {"model": AdmissionOut, "description": "concurrency_limit, start_rate_limited"},
}


@router.post("/v1/admissions", response_model=AdmissionOut, responses=REFUSALS)
def post_admission(
    body: AdmissionIn, session: SessionDep, principal: PrincipalDep, settings: SettingsDep
) -> JSONResponse:
    """Admit a sandbox start (a lease holding a concurrency slot) or refuse it with a reason."""
    principal.require("ingest")
    now = from_ms(to_ms(utc_now()))
    decision = service.admit(
        session, settings, body.team_id, body.sandbox_id,
        AdmissionRequest(body.vcpu, body.memory_mib, body.disk_mib, body.timeout_s), now)
    return JSONResponse(status_code=decision.status, content=decision.body)
