"""`POST /v1/admissions`: the orchestrator asks before each sandbox start."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials

from metering import db_async, observability
from metering.admissions import service
from metering.admissions.schemas import REFUSALS, AdmissionIn, AdmissionOut
from metering.api import bulkhead
from metering.api.deps import bearer
from metering.core.admission import AdmissionRequest
from metering.core.clock import from_ms, to_ms, utc_now
from metering.db import transaction
from metering.errors import Unauthorized

router = APIRouter(tags=["admissions"])


def _admit(app_state: Any, token: str, body: AdmissionIn) -> service.Decision:
    """The whole unit of work in one worker thread: key, decision, lease, commit."""
    with transaction(app_state.sessions) as session:
        now = from_ms(to_ms(utc_now()))
        return service.admit(
            session, app_state.settings, token, body.team_id, body.sandbox_id,
            AdmissionRequest(body.vcpu, body.memory_mib, body.disk_mib, body.timeout_s), now)


def require_bearer(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """A request without a key is told so before its body is looked at."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")


@router.post("/v1/admissions", response_model=AdmissionOut, responses=REFUSALS,
             dependencies=[Depends(require_bearer)])
async def post_admission(
    body: AdmissionIn, request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """Admit a sandbox start (a lease holding a concurrency slot) or refuse it with a reason.

    On the orchestrator's start path: a known team whose plan stops at no credit and that has
    no spend limit is answered on the event loop (two pipelined round trips: key, lock, lease,
    counts and team; then lease and commit). Anyone else, or any database trouble, takes one
    hop to a worker thread that does the same with the money reads added. Either way the
    lease is committed, and seen by every later admission, before the answer (without
    waiting for the disk unless `METERING_ADMISSION_DURABLE_COMMIT`: see the README)."""
    token = credentials.credentials if credentials else None
    if not token:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    state = request.app.state
    decision = None
    pool = db_async.pool_for_loop(state)
    if pool is not None:
        try:
            decision = await service.admit_on_loop(
                pool, state.settings, token, body.team_id, body.sandbox_id,
                AdmissionRequest(body.vcpu, body.memory_mib, body.disk_mib, body.timeout_s),
                from_ms(to_ms(utc_now())))
        except db_async.FastPathUnavailable:
            path = "fallback"
        else:
            path = "loop" if decision is not None else "thread"
    else:
        path = "thread"
    observability.observe_admission_path(path)
    if decision is None:
        decision = await bulkhead.run_sync(request, _admit, state, token, body)
    return Response(orjson.dumps(decision.body), status_code=decision.status,
                    media_type="application/json")
