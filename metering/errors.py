"""One error tree, one JSON shape: `{"error": {"code", "message", ...}}` with its HTTP status."""

from __future__ import annotations

from typing import Any


class MeteringError(Exception):
    """Base of every error the API answers on purpose."""

    status_code = 400
    code = "bad_request"
    retry_after_s: int | None = None  # sent as `Retry-After` when set

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def __reduce__(self) -> tuple[Any, ...]:
        # Whole across a process boundary (from a helper process), details included.
        return type(self), (self.message,), {"details": self.details}


class BadRequest(MeteringError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(MeteringError):
    status_code = 401
    code = "unauthorized"


class Forbidden(MeteringError):
    status_code = 403
    code = "forbidden"


class NotFound(MeteringError):
    status_code = 404
    code = "not_found"


class Conflict(MeteringError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(MeteringError):
    status_code = 413
    code = "payload_too_large"


class InvalidSignature(Exception):
    """A signed message that does not verify: not signed with this secret, too old, or
    malformed. Raised for the orchestrator channel's `Metering-Signature` and for Stripe's
    webhooks alike; never an API answer by itself."""


class StorageUnavailable(MeteringError):
    status_code = 503
    code = "storage_unavailable"
    retry_after_s = 1


class InternalError(MeteringError):
    """A failure of the service's own (logged where it happened): the body says no more."""

    status_code = 500
    code = "internal"


class RateLimited(MeteringError):
    status_code = 429
    code = "rate_limited"


QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement past statement_timeout
CANCELLED_READ = ("the read ran past its time limit and was cancelled; ask for a shorter "
                  "range or a coarser granularity, or retry later")
STORAGE_DOWN = "storage is unavailable; nothing was stored, retry later"
AT_CAPACITY = "the service is at capacity; nothing was stored, retry after 1 s"
CONCURRENT_WRITES = ("the request met concurrent writes or a transient database condition and "
                     "was rolled back; retry it")
UNSTORABLE_VALUE = "a value is out of range or contains a NUL (0x00) character"


class Overloaded(MeteringError):
    """The process is at capacity (a pool or class limit), not broken: retry after a moment."""

    status_code = 503
    code = "overloaded"
    retry_after_s = 1


class ReadCancelled(Overloaded):
    """A read past its statement timeout: `overloaded`, with a longer wait."""

    retry_after_s = 5

    def __init__(self, message: str = CANCELLED_READ) -> None:
        super().__init__(message)
