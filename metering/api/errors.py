"""The error body every endpoint answers, for the OpenAPI document: `{"error": {...}}`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


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
