"""Validation of CloudEvents batches from the orchestrator, as pure functions.

A batch is validated event by event; each bad event becomes an `EventError` value naming the
field, so one bad event never blocks the good ones beside it. A valid event becomes an
immutable `SandboxEvent` carrying its digest (for duplicate/conflict detection) and the typed
fields billing needs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from metering.core.clock import from_ms, to_ms

LIFECYCLE_TYPES = (
    "sandbox.lifecycle.created",
    "sandbox.lifecycle.resumed",
    "sandbox.lifecycle.updated",
    "sandbox.lifecycle.paused",
    "sandbox.lifecycle.killed",
)
HOST_STATS = "sandbox.host_stats"
EVENT_TYPES = frozenset((*LIFECYCLE_TYPES, HOST_STATS))
KILL_REASONS = frozenset({"request", "timeout", "limit", "admin", "error", "orphaned"})

MAX_ID = 256
MAX_SOURCE = 1024
MAX_NAME = 128
MAX_SUBJECT = 256

_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True, slots=True)
class EventError:
    index: int
    id: str | None
    code: str  # invalid | future_time | conflict
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class SandboxEvent:
    """One valid event. `kind` is the last part of the type (created, …, host_stats)."""

    index: int
    source: str
    id: str
    type: str
    kind: str
    subject: str
    time: datetime
    time_ms: int
    team_id: str
    execution_id: str
    data: dict[str, Any]
    digest: bytes
    vcpu: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    template_id: str | None = None
    reason: str | None = None
    cpu_pct: float | None = None  # float-ok: a measurement shown in charts, never billed
    memory_used_mib: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.id)


class _Invalid(Exception):
    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def digest_of(event: dict[str, Any]) -> bytes:
    """Content digest: the canonical (sorted-key) JSON of the whole event."""
    canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).digest()


def _string(obj: dict[str, Any], field: str, path: str, limit: int, required: bool = True) -> str:
    value = obj.get(field)
    if value is None:
        if required:
            raise _Invalid(f"{path}: required")
        return ""
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{path}: must be a non-empty string")
    if len(value) > limit:
        raise _Invalid(f"{path}: at most {limit} characters")
    return value


def _int(data: dict[str, Any], field: str, minimum: int, required: bool) -> int | None:
    value = data.get(field)
    if value is None:
        if required:
            raise _Invalid(f"data.{field}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _Invalid(f"data.{field}: must be an integer")
    if value < minimum:
        raise _Invalid(f"data.{field}: must be >= {minimum}")
    if value > 2**31 - 1:
        raise _Invalid(f"data.{field}: must be < 2^31")
    return value


def _number(data: dict[str, Any], field: str) -> float | None:  # float-ok: measurements
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"data.{field}: must be a number")
    if not 0 <= value <= 1e7:  # also refuses NaN
        raise _Invalid(f"data.{field}: must be between 0 and 10000000")
    return value


def parse_time(value: Any) -> datetime:
    """RFC 3339 with an offset, any fraction digits (finer than µs truncated)."""
    if not isinstance(value, str) or not value:
        raise _Invalid("time: required, an RFC 3339 timestamp")
    text = _FRACTION.sub(r"\1", value.strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Invalid(f"time: not an RFC 3339 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        raise _Invalid("time: must carry a UTC offset or Z")
    return moment.astimezone(UTC)


def _validate(raw: Any, index: int, now_ms: int, future_tolerance_ms: int) -> SandboxEvent:
    if not isinstance(raw, dict):
        raise _Invalid("event: must be a JSON object")
    if raw.get("specversion") != "1.0":
        raise _Invalid("specversion: must be \"1.0\"")
    event_id = _string(raw, "id", "id", MAX_ID)
    source = _string(raw, "source", "source", MAX_SOURCE)
    event_type = raw.get("type")
    if event_type not in EVENT_TYPES:
        raise _Invalid(f"type: unknown event type {event_type!r}")
    subject = _string(raw, "subject", "subject", MAX_SUBJECT)
    moment = parse_time(raw.get("time"))
    time_ms = to_ms(moment)
    data = raw.get("data")
    if not isinstance(data, dict):
        raise _Invalid("data: must be a JSON object")
    team_id = _string(data, "team_id", "data.team_id", MAX_NAME)
    execution_id = _string(data, "execution_id", "data.execution_id", MAX_SUBJECT)
    kind = event_type.rsplit(".", 1)[1]
    fields: dict[str, Any] = {}
    if kind in ("created", "resumed"):
        fields["vcpu"] = _int(data, "vcpu", 1, True)
        fields["memory_mib"] = _int(data, "memory_mib", 1, True)
        fields["disk_mib"] = _int(data, "disk_mib", 0, False)
        template = data.get("template_id")
        if template is not None and not isinstance(template, str):
            raise _Invalid("data.template_id: must be a string")
        fields["template_id"] = template
    elif kind == "updated":
        fields["vcpu"] = _int(data, "vcpu", 1, False)
        fields["memory_mib"] = _int(data, "memory_mib", 1, False)
        if fields["vcpu"] is None and fields["memory_mib"] is None:
            raise _Invalid("data: an updated event needs vcpu and/or memory_mib")
    elif kind == "killed":
        reason = data.get("reason")
        if reason is not None and reason not in KILL_REASONS:
            allowed = ", ".join(sorted(KILL_REASONS))
            raise _Invalid(f"data.reason: must be one of {allowed}")
        fields["reason"] = reason
    elif kind == "host_stats":
        fields["cpu_pct"] = _number(data, "cpu_pct")
        used = _number(data, "memory_used_mib")
        fields["memory_used_mib"] = None if used is None else int(used)
    if time_ms > now_ms + future_tolerance_ms:
        raise _Invalid(
            f"time: {moment.isoformat()} is more than {future_tolerance_ms // 1000} s "
            "in the future",
            code="future_time",
        )
    return SandboxEvent(
        index=index, source=source, id=event_id, type=event_type, kind=kind, subject=subject,
        time=from_ms(time_ms), time_ms=time_ms, team_id=team_id, execution_id=execution_id,
        data=data,
        digest=digest_of(raw), **fields,
    )


def validate_batch(
    batch: list[Any], now: datetime, future_tolerance_s: int = 300
) -> tuple[list[SandboxEvent], list[EventError]]:
    """Split a batch into valid events and per-index errors (in index order)."""
    now_ms = to_ms(now)
    tolerance_ms = future_tolerance_s * 1000
    valid: list[SandboxEvent] = []
    errors: list[EventError] = []
    for index, raw in enumerate(batch):
        try:
            valid.append(_validate(raw, index, now_ms, tolerance_ms))
        except _Invalid as exc:
            raw_id = raw.get("id") if isinstance(raw, dict) else None
            errors.append(EventError(index, raw_id if isinstance(raw_id, str) else None,
                                     exc.code, exc.message))
    return valid, errors


def key_tag(source: str, event_id: str, digest: bytes) -> int:
    """The 64-bit per-sample tag kept in minute rows: 48 bits of key hash, 16 of content.

    Signed, to fit PostgreSQL's bigint.
    """
    key = hashlib.blake2b(f"{source}\x00{event_id}".encode(), digest_size=6).digest()
    unsigned = int.from_bytes(key + digest[:2], "big")
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


def same_key(tag_a: int, tag_b: int) -> bool:
    """Whether two tags name the same (source, id): their upper 48 bits agree."""
    return (tag_a >> 16) == (tag_b >> 16)
