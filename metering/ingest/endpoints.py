"""`POST /v1/events`: CloudEvents batches from the orchestrator."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from sqlalchemy.orm import Session

from metering.api import bulkhead
from metering.api.deps import authenticate, bearer
from metering.api.errors import ErrorOut
from metering.core.clock import utc_now
from metering.db import run_transaction
from metering.errors import PayloadTooLarge, Unauthorized
from metering.ingest import binding, service

router = APIRouter(tags=["events"])

BATCH_EXAMPLE = [{
    "specversion": "1.0", "id": "01JD3T8W0K3M", "source": "orchestrator/eu-1/node-17",
    "type": "sandbox.lifecycle.created", "subject": "sbx_3f9a",
    "time": "2026-11-03T10:15:02.125Z",
    "data": {"team_id": "team_8c1", "execution_id": "exe_71d", "template_id": "base",
             "build_id": "bld_1", "vcpu": 2, "memory_mib": 1024, "disk_mib": 10240},
}, {
    "specversion": "1.0", "id": "01JD3T8W0K3N", "source": "orchestrator/eu-1/node-17",
    "type": "sandbox.host_stats", "subject": "sbx_3f9a", "time": "2026-11-03T10:15:03.125Z",
    "data": {"team_id": "team_8c1", "execution_id": "exe_71d", "cpu_pct": 37.5,
             "memory_used_mib": 412},
}]
BATCH_SCHEMA = {"type": "array", "items": {"type": "object"}, "maxItems": 10_000,
                "example": BATCH_EXAMPLE}
EVENT_SCHEMA = {"type": "object", "example": BATCH_EXAMPLE[0]}


class EventErrorOut(BaseModel):
    index: int
    id: str | None
    code: str
    message: str


class IngestOut(BaseModel):
    model_config = {"json_schema_extra": {"example": {
        "accepted": 998, "duplicates": 1, "rejected": 1, "errors": [
            {"index": 7, "id": "01JD3T8W0K3Z", "code": "invalid",
             "message": "data.vcpu: must be >= 1"}]}}}

    accepted: int
    duplicates: int
    rejected: int
    errors: list[EventErrorOut]


SINGLE_EVENT_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": IngestOut | ErrorOut, "description": "a single event (structured or "
          "binary mode) refused, in the ingest answer's shape; or `invalid_request` (an "
          "error): the body is not a batch or an event at all"},
    409: {"model": IngestOut, "description": "a single event (structured or binary mode) "
          "that conflicts with one stored under the same (source, id)"},
}


async def read_body(request: Request) -> bytes:
    """The whole body, refusing oversize bodies before reading them whole."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_batch(request: Request) -> binding.Envelope:
    """The request's events in any CloudEvents HTTP mode (batched, structured, binary)."""
    envelope = binding.parse(request.headers, await read_body(request))
    limit = request.app.state.settings.max_batch_events
    if len(envelope.events) > limit:
        raise PayloadTooLarge(f"batch has {len(envelope.events)} events; the limit is {limit}")
    return envelope


BACKFILL_ROLES = frozenset({"finance", "admin"})
ATTEMPTS = 3


def _ingest(app_state: Any, token: str | None, batch: list[Any]) -> dict[str, Any]:
    """The whole unit of work in one worker thread: key, ingest, commit (durable before the
    answer). A transaction that lost a deadlock is run again whole."""
    settings = app_state.settings

    def work(session: Session) -> service.IngestResult:
        principal = authenticate(session, token)
        principal.require("ingest", "finance")
        # Finance and admin may backfill past the maximum age on purpose.
        max_age = None if principal.role in BACKFILL_ROLES else settings.max_event_age_days
        return service.ingest(session, batch, utc_now(), settings.future_tolerance_s, max_age)

    result = run_transaction(app_state.sessions, work, attempts=ATTEMPTS)
    return result.as_dict()


@router.post(
    "/v1/events",
    response_model=IngestOut,
    summary="Ingest sandbox events (CloudEvents: batched, structured or binary mode)",
    responses=SINGLE_EVENT_REFUSALS,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/cloudevents-batch+json": {"schema": BATCH_SCHEMA},
        "application/json": {"schema": BATCH_SCHEMA},
        "application/cloudevents+json": {"schema": EVENT_SCHEMA},
    }}},
)
async def post_events(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """Store CloudEvents, in any mode of the CloudEvents HTTP binding. Idempotent on
    (source, id); answers after everything accepted is committed.

    - **batched**: a JSON array, `Content-Type: application/cloudevents-batch+json` (or
      `application/json`); up to 10,000 events and 10 MiB;
    - **structured**: one event object, `Content-Type: application/cloudevents+json`;
    - **binary**: the attributes in `ce-specversion`, `ce-id`, `ce-source`, `ce-type`,
      `ce-subject` and `ce-time` headers, the event's `data` as a JSON body.

    The answer has the same shape in every mode. A batch answers `200` with an error per
    refused event (its index, code and message): one bad event never blocks the others. A
    single event (structured or binary) answers `200` when accepted or a duplicate, and
    `400` (`409` for a conflict) with the same body when refused.
    """
    if credentials is None:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    envelope = await read_batch(request)
    answer = await bulkhead.run_sync(request, _ingest, request.app.state,
                                     credentials.credentials, envelope.events)
    status = binding.single_status(answer) if envelope.single else 200
    return Response(orjson.dumps(answer), status_code=status, media_type="application/json")
