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

from psycopg_pool import AsyncConnectionPool
from sqlalchemy.orm import Session

from metering import db_async, known, plugins
from metering.admissions import repository as repo
from metering.admissions.schemas import REFUSAL_STATUS
from metering.auth.service import Principal, digest, resolve
from metering.config import Settings
from metering.core.admission import (
    Admission,
    AdmissionRequest,
    AdmissionState,
    Refusal,
    decide_admission,
)
from metering.core.clock import rfc3339
from metering.db import commit_with
from metering.errors import Unauthorized
from metering.plugins import Standing, TeamLimits
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
    if (answer := _authorized_lease(got)) is not None:
        return answer
    team_limits, standing = billing.admission(session, team_id, now, got.billing)
    decision, lease = _decide(settings, team_id, sandbox_id, request, now, got, team_limits,
                              standing)
    if lease is not None:
        # The lease and the commit (which releases the team's lock) in one round trip.
        commit_with(session, repo.INSERT_LEASE, lease,
                    durable=settings.admission_durable_commit)
    return decision


async def admit_on_loop(
    pool: AsyncConnectionPool, settings: Settings, token: str, team_id: str, sandbox_id: str,
    request: AdmissionRequest, now: datetime,
) -> Decision | None:
    """`admit` on the event loop, for a known team whose decision billing can make from its
    prefetched row alone (no credit or spend to add up). None: take the threaded `admit`
    (nothing was written). Raises `FastPathUnavailable` on any database trouble."""
    if known.teams.unknown([team_id]) or team_id in known.threaded_admissions:
        return None
    billing = plugins.billing()
    async with db_async.connection(pool) as conn:
        got = await repo.prefetch_async(
            conn, digest(token), team_id, sandbox_id, now,
            timedelta(seconds=settings.stale_after_s), billing.admission_prefetch(team_id))
        if (answer := _authorized_lease(got)) is not None:
            return answer
        view = billing.admission_from_read(team_id, now, got.billing)
        if view is None:
            # Rolled back on the way out, so the lock is free for the threaded path; the
            # team's next admissions go there directly for a while.
            known.threaded_admissions.add(team_id)
            return None
        decision, lease = _decide(settings, team_id, sandbox_id, request, now, got, *view)
        if lease is not None:
            await db_async.commit_with(conn, repo.INSERT_LEASE, lease,
                                       durable=settings.admission_durable_commit)
        return decision


def _authorized_lease(got: repo.Prefetched) -> Decision | None:
    """Refuse a key that may not admit; answer the sandbox's live lease to a retry."""
    if got.key_role is None:
        raise Unauthorized("unknown or revoked API key")
    Principal("", got.key_role, None).require("ingest")
    if got.lease is None:
        return None
    lease = got.lease
    return Decision(200, {"admitted": True, "lease_id": lease.id,
                          "max_duration_s": lease.max_duration_s,
                          "expires_at": rfc3339(lease.expires_at)})


def _decide(
    settings: Settings, team_id: str, sandbox_id: str, request: AdmissionRequest,
    now: datetime, got: repo.Prefetched, team_limits: TeamLimits, standing: Standing,
) -> tuple[Decision, dict[str, Any] | None]:
    """The pure policy's answer, and the lease to insert when it admits."""
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
        return Decision(REFUSAL_STATUS[decision.reason], body), None
    assert isinstance(decision, Admission)
    lease_id = "lease_" + secrets.token_hex(10)
    expires_at = now + timedelta(seconds=settings.lease_ttl_s)
    lease = {"id": lease_id, "team_id": team_id, "sandbox_id": sandbox_id,
             "vcpu": request.vcpu, "memory_mib": request.memory_mib,
             "disk_mib": request.disk_mib, "max_duration_s": decision.max_duration_s,
             "now": now, "expires_at": expires_at}
    return Decision(200, {"admitted": True, "lease_id": lease_id,
                          "max_duration_s": decision.max_duration_s,
                          "expires_at": rfc3339(expires_at)}), lease
