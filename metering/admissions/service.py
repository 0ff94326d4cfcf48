"""Admissions: may this team start this sandbox now?

One transaction per request: the team's advisory lock, then the live lease of the same
sandbox (a retry gets the same lease), then the pure policy over counts and standing, then
the new lease. With 19 of 20 slots taken, 50 simultaneous requests admit exactly one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from metering import plugins
from metering.admissions import repository as repo
from metering.config import Settings
from metering.core.clock import rfc3339
from metering.core.limits import (
    Admission,
    AdmissionRequest,
    AdmissionState,
    Refusal,
    decide_admission,
)
from metering.teams import service as teams


@dataclass(frozen=True, slots=True)
class Decision:
    status: int
    body: dict[str, Any]


def admit(
    session: Session, settings: Settings, team_id: str, sandbox_id: str,
    request: AdmissionRequest, now: datetime,
) -> Decision:
    teams.ensure_teams(session, [team_id], now)
    repo.lock_team(session, team_id)
    existing = repo.live_lease(session, team_id, sandbox_id, now)
    if existing is not None:
        return Decision(200, {"admitted": True, "lease_id": existing.id,
                              "max_duration_s": existing.max_duration_s,
                              "expires_at": rfc3339(existing.expires_at)})
    team_limits, standing = plugins.billing().admission(session, team_id, now)
    running, leases, starts = repo.counts(
        session, team_id, now, timedelta(seconds=settings.stale_after_s))
    state = AdmissionState(
        blocked=standing.blocked, plan_code=team_limits.plan_code, running=running,
        leases=leases, starts_last_second=starts,
        credit_remaining=standing.credit_remaining, month_spend=standing.month_spend,
        spend_limit=standing.spend_limit, currency=standing.currency,
    )
    decision = decide_admission(request, team_limits.limits, state)
    if isinstance(decision, Refusal):
        body = decision.body()
        body["error"] = {"code": decision.reason, "message": decision.message}
        return Decision(decision.http_status, body)
    assert isinstance(decision, Admission)
    lease_id = "lease_" + secrets.token_hex(10)
    expires_at = now + timedelta(seconds=settings.lease_ttl_s)
    repo.insert_lease(
        session, id=lease_id, team_id=team_id, sandbox_id=sandbox_id, vcpu=request.vcpu,
        memory_mib=request.memory_mib, disk_mib=request.disk_mib,
        max_duration_s=decision.max_duration_s, now=now, expires_at=expires_at)
    return Decision(200, {"admitted": True, "lease_id": lease_id,
                          "max_duration_s": decision.max_duration_s,
                          "expires_at": rfc3339(expires_at)})
