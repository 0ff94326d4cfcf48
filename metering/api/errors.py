"""The error body every endpoint answers, for the OpenAPI document: `{"error": {...}}`; and
what the API answers for a database failure, wherever it happened (`api_error`)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from metering.db import RETRYABLE_SQLSTATES
from metering.errors import (
    AT_CAPACITY,
    CONCURRENT_WRITES,
    QUERY_CANCELED,
    STORAGE_DOWN,
    UNSTORABLE_VALUE,
    BadRequest,
    InternalError,
    MeteringError,
    Overloaded,
    ReadCancelled,
    StorageUnavailable,
)

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    """`code` and `message` always; some errors add details (e.g. `fields` on a 422)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


def error_response(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# What any authenticated endpoint may answer besides its success (see metering.errors).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_response("`invalid_request`: a value the service refuses (a time without "
                        "offset, a foreign cursor, a value out of range, a body that is not JSON)"),
    401: error_response("`unauthorized`: missing, unknown or revoked API key"),
    403: error_response("`forbidden`: the key's role may not use this endpoint"),
    404: error_response("`not_found`: no such resource, or one a team key may not see"),
    409: error_response("`conflict`: the resource's state does not allow this"),
    422: error_response("`invalid_request`: the request does not match this schema; "
                        "`fields` lists each problem"),
    429: error_response("`rate_limited`: the key is over its rate or concurrency allowance; "
                        "retry after `Retry-After` (see the `RateLimit-*` headers)"),
    503: error_response("`storage_unavailable` (nothing was stored) or `overloaded` (the "
                        "service is at capacity): retry after `Retry-After`"),
}


def api_error(exc: DBAPIError | PoolTimeout) -> MeteringError:
    """What the API answers for a database failure: in the API process (its exception
    handler) or in a helper process (which sends this back instead of the driver's exception
    and the statement's parameters)."""
    if isinstance(exc, PoolTimeout):
        # The database is fine; this process has no connection free for the request's class.
        log.warning("connection pool exhausted: %s", exc)
        return Overloaded(AT_CAPACITY)
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate == QUERY_CANCELED:
        return ReadCancelled()
    if sqlstate in RETRYABLE_SQLSTATES or isinstance(exc, OperationalError) or (
            exc.connection_invalidated):
        log.warning("storage unavailable: %s %s", type(exc).__name__, sqlstate or "")
        return StorageUnavailable(
            CONCURRENT_WRITES if sqlstate in RETRYABLE_SQLSTATES else STORAGE_DOWN)
    if isinstance(exc, DataError):
        # SQLSTATE class 22, or psycopg refusing a NUL byte in text: a value from the
        # request that PostgreSQL cannot store (integer/numeric out of range, NUL).
        log.info("refused a value the database cannot store: %s", exc.orig)
        return BadRequest(UNSTORABLE_VALUE)
    log.error("database error", exc_info=exc)
    return InternalError("internal error")
