"""`POST /v1/events`: CloudEvents batches from the orchestrator."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from metering.api import bulkhead, helpers
from metering.api.deps import authenticate, bearer
from metering.api.errors import ErrorOut, api_error
from metering.config import Settings
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


def parse_batch(headers: Mapping[str, str], body: bytes, limit: int) -> binding.Envelope:
    """The request's events in any CloudEvents HTTP mode (batched, structured, binary)."""
    envelope = binding.parse(headers, body)
    if len(envelope.events) > limit:
        raise PayloadTooLarge(f"batch has {len(envelope.events)} events; the limit is {limit}")
    return envelope


BACKFILL_ROLES = frozenset({"finance", "admin"})
ATTEMPTS = 3


def _ingest(settings: Settings, sessions: sessionmaker[Session], token: str,
            batch: list[Any]) -> dict[str, Any]:
    """The whole unit of work: key, ingest, commit (durable before the answer). A transaction
    that lost a deadlock or its connection is run again whole (ingest is idempotent: should
    a lost connection have committed it, the rerun answers its events as duplicates)."""

    def work(session: Session) -> service.IngestResult:
        principal = authenticate(session, token)
        principal.require("ingest", "finance")
        # Finance and admin may backfill past the maximum age on purpose.
        max_age = None if principal.role in BACKFILL_ROLES else settings.max_event_age_days
        return service.ingest(session, batch, utc_now(), settings.future_tolerance_s, max_age,
                              commit=True)

    result = run_transaction(sessions, work, attempts=ATTEMPTS)
    return result.as_dict()


def _ingest_in_helper(token: str, headers: dict[str, str], body: bytes
                      ) -> tuple[dict[str, Any], bool]:
    """In an ingest helper: the body parsed, validated and stored; the answer and whether the
    request was a single event."""
    settings, sessions = helpers.state()
    envelope = parse_batch(headers, body, settings.max_batch_events)
    try:
        return _ingest(settings, sessions, token, envelope.events), envelope.single
    except (DBAPIError, PoolTimeout) as exc:
        raise api_error(exc) from None


# No ping on checkout: a batch that lost its connection runs again whole on a new one
# (`_ingest`), and the ping was a round trip of its own for every batch.
INGEST_POOL = helpers.Pool(None, 5.0, pre_ping=False)


class IngestHelpers(helpers.Helpers):
    """An API process's ingest helpers: they parse, validate and store event batches, so that
    the API process's interpreter lock serves its event loop (admissions, the kill-order
    feed) instead. One batch at a time each, on a connection of its own."""

    def __init__(self, settings: Settings, database_url: str,
                 setup: Callable[[], None] | None = None) -> None:
        super().__init__("ingest", settings, database_url, workers=settings.ingest_helpers,
                         nice=settings.ingest_helper_nice, setup=setup, pool=INGEST_POOL)


def _binding_headers(request: Request) -> dict[str, str]:
    """The headers the CloudEvents binding reads: the content type and the `ce-*` ones."""
    return {name: value for name, value in request.headers.items()
            if name == "content-type" or name.startswith("ce-")}


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
    body = await read_body(request)
    state = request.app.state
    in_helpers: IngestHelpers | None = state.ingest_helpers
    if in_helpers is not None:
        answer, single = await in_helpers.call(_ingest_in_helper, credentials.credentials,
                                               _binding_headers(request), body)
    else:
        envelope = parse_batch(request.headers, body, state.settings.max_batch_events)
        answer = await bulkhead.run_sync(request, _ingest, state.settings, state.sessions,
                                         credentials.credentials, envelope.events)
        single = envelope.single
    status = binding.single_status(answer) if single else 200
    return Response(orjson.dumps(answer), status_code=status, media_type="application/json")
