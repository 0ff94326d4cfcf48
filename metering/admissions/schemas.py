"""What `POST /v1/admissions` takes and answers, and the HTTP status of each refusal."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from metering.api.errors import ErrorOut
from metering.core.admission import RefusalReason

# One table for reason -> HTTP status, in the policy's check order: 403 for what can never
# succeed on the plan, 402 for what paying fixes, 429 for what waiting fixes.
REFUSAL_STATUS: dict[RefusalReason, int] = {
    "team_blocked": 402,
    "resources_exceed_plan": 403,
    "duration_exceeds_plan": 403,
    "credit_exhausted": 402,
    "spend_limit_reached": 402,
    "concurrency_limit": 429,
    "start_rate_limited": 429,
}


class AdmissionIn(BaseModel):
    model_config = {"json_schema_extra": {"example": {
        "team_id": "team_8c1", "sandbox_id": "sbx_3f9a", "vcpu": 2, "memory_mib": 1024,
        "disk_mib": 10240, "timeout_s": 3600}}}

    team_id: str = Field(min_length=1, max_length=128)
    sandbox_id: str = Field(min_length=1, max_length=256)
    vcpu: int = Field(ge=1, le=1024)
    memory_mib: int = Field(ge=1, le=16_777_216)
    disk_mib: int | None = Field(default=None, ge=1, le=2**31 - 1)
    timeout_s: int | None = Field(default=None, ge=1, le=2**31 - 1)


class AdmissionOut(BaseModel):
    model_config = {"json_schema_extra": {"examples": [
        {"admitted": True, "lease_id": "lease_5b1c0e9d2a", "max_duration_s": 3600,
         "expires_at": "2026-11-03T10:16:32.125Z"},
        {"admitted": False, "reason": "concurrency_limit", "limit": 20, "current": 20,
         "message": "20 sandboxes are running or starting (19 running, 1 starting); "
                    "the limit is 20 concurrent."}]}}

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
    403: {"model": AdmissionOut | ErrorOut,
          "description": "resources_exceed_plan, duration_exceeds_plan (an admission); "
          "`forbidden` (an error: the key's role is not ingest)"},
    429: {"model": AdmissionOut | ErrorOut,
          "description": "concurrency_limit, start_rate_limited (an admission refusal, "
          "`admitted: false`); `rate_limited` (an error: the key is over its allowance)"},
}
