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

from metering import known, plugins
from metering.admissions import repository as repo
from metering.auth.service import Principal, digest, resolve
from metering.config import Settings
from metering.core.clock import rfc3339
from metering.core.limits import (
    Admission,
    AdmissionRequest,
    AdmissionState,
    Refusal,
    decide_admission,
)
from metering.errors import Unauthorized
from metering.teams import service as teams


@dataclass(frozen=True, slots=True)
class Decision:
    status: int
    body: dict[str, Any]


def admit(
    session: Session, settings: Settings, token: str, team_id: str, sandbox_id: str,
    request: AdmissionRequest, now: datetime,
) -> Decision:
    """Check the key (role ingest), then decide under the team's lock.

    The key, the lock, the live lease, the counts and billing's read of the team go to the
    database in one round trip; a team seen for the first time is created (after a separate
    key check, so no unauthenticated request creates a team)."""
    if known.teams.unknown([team_id]):
        principal = resolve(session, token)
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        principal.require("ingest")
        teams.ensure_teams(session, [team_id], now)
    billing = plugins.billing()
    got = repo.prefetch(session, digest(token), team_id, sandbox_id, now,
                        timedelta(seconds=settings.stale_after_s),
                        billing.admission_prefetch(team_id))
    if got.key_role is None:
        raise Unauthorized("unknown or revoked API key")
    Principal("", got.key_role, None).require("ingest")
    if got.lease is not None:
        lease_id, max_duration_s, expires = got.lease
        return Decision(200, {"admitted": True, "lease_id": lease_id,
                              "max_duration_s": max_duration_s,
                              "expires_at": rfc3339(expires)})
    team_limits, standing = billing.admission(session, team_id, now, got.billing_row)
    state = AdmissionState(
        blocked=standing.blocked, plan_code=team_limits.plan_code, running=got.running,
        leases=got.leases, starts_last_second=got.starts_last_second,
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
    repo.insert_lease_and_commit(
        session, id=lease_id, team_id=team_id, sandbox_id=sandbox_id, vcpu=request.vcpu,
        memory_mib=request.memory_mib, disk_mib=request.disk_mib,
        max_duration_s=decision.max_duration_s, now=now, expires_at=expires_at)
    return Decision(200, {"admitted": True, "lease_id": lease_id,
                          "max_duration_s": decision.max_duration_s,
                          "expires_at": rfc3339(expires_at)})
