"""Validation of CloudEvents batches from the orchestrator, as pure functions.

A batch is validated event by event; each bad event becomes an `EventError` value naming the
field, so one bad event never blocks the good ones beside it. A valid event becomes an
immutable `SandboxEvent` carrying its digest (for duplicate/conflict detection) and the typed
fields billing needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any
from zlib import adler32, crc32

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
MAX_SUBJECT = 128
# Everything one event may weigh (canonical JSON): a few hundred bytes in practice; the bound
# keeps a single event's cost fixed whatever its unknown fields hold.
MAX_EVENT_BYTES = 16 * 1024
# Before this no sandbox ever ran; a time before it is a zero or garbage value.
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z

# Ids (team_id, execution_id, subject): safe in URLs, logs and CSV cells as they are.
_ID = re.compile(r"[A-Za-z0-9._:@+\-]{1,128}")
# Three identifiers at once (subject, team, execution), NUL-separated: NUL is outside the
# alphabet, so the three parts are exactly the three identifiers (one call instead of three).
_THREE_IDS = re.compile(r"[A-Za-z0-9._:@+\-]{1,128}\x00[A-Za-z0-9._:@+\-]{1,128}"
                        r"\x00[A-Za-z0-9._:@+\-]{1,128}")
ID_ALPHABET = "A-Z a-z 0-9 . _ : @ + -"
# RFC 3339 `date-time` only: ISO 8601's other spellings (week dates, basic format) are not.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")
# A NUL escaped in JSON text (and not a literal backslash followed by "u0000").
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True, slots=True)
class EventError:
    index: int
    id: str | None
    code: str  # invalid | future_time | too_old | conflict
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "code": self.code, "message": self.message}


@dataclass(slots=True)
class SandboxEvent:
    """One valid event. `kind` is the last part of the type (created, …, host_stats).

    Not frozen: a frozen dataclass pays a `object.__setattr__` per field, and ingest builds
    tens of thousands of these a second. Treat it as immutable all the same.

    `time_ms` is the event time truncated to the millisecond (finer digits never bill).
    `tag` is the 64-bit sample tag (see `key_tag`), set for host_stats only. `digest` is a
    16-byte hash of the canonical JSON for lifecycle events and the canonical JSON itself
    for samples; either way equal digests mean equal content.
    """

    index: int
    source: str
    id: str
    kind: str
    subject: str
    time_ms: int
    team_id: str
    execution_id: str
    data: dict[str, Any]
    digest: bytes
    key: tuple[str, str]  # (source, id)
    vcpu: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    template_id: str | None = None
    reason: str | None = None
    cpu_centipct: int | None = None
    memory_used_mib: int | None = None
    tag: int = 0

    @property
    def type(self) -> str:
        return HOST_STATS if self.kind == "host_stats" else f"sandbox.lifecycle.{self.kind}"

    @property
    def time(self) -> datetime:
        return from_ms(self.time_ms)


class _Invalid(Exception):
    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def canonical_json(event: dict[str, Any]) -> bytes:
    """The sorted-key JSON of an event, refused if it cannot be stored as it is: nested past
    what a JSON writer allows, larger than `MAX_EVENT_BYTES`, or holding a NUL character
    (PostgreSQL text and jsonb cannot)."""
    try:
        canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        if "Integer" in str(exc):
            raise _Invalid("event: an integer beyond 64 bits") from None
        if "surrogates" in str(exc) or "UTF-8" in str(exc):
            raise _Invalid("event: a string is not valid Unicode (a lone surrogate)") from None
        raise _Invalid("event: nested too deeply (at most 254 levels)") from None
    if len(canonical) > MAX_EVENT_BYTES:
        raise _Invalid(f"event: at most {MAX_EVENT_BYTES} bytes of JSON")
    if b"\\u0000" in canonical and _NUL.search(canonical):
        raise _Invalid("event: a string contains a NUL (\\u0000) character")
    return canonical


def digest_of(event: dict[str, Any]) -> bytes:
    """Content digest: the canonical (sorted-key) JSON of the whole event."""
    return blake2b(canonical_json(event), digest_size=16).digest()


def _identifier(obj: dict[str, Any], field: str, path: str) -> str:
    value = obj.get(field)
    if type(value) is str and _ID.fullmatch(value):
        return value
    if value is None:
        raise _Invalid(f"{path}: required")
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{path}: must be a non-empty string")
    if len(value) > MAX_NAME:
        raise _Invalid(f"{path}: at most {MAX_NAME} characters")
    raise _Invalid(f"{path}: only the characters {ID_ALPHABET} are allowed")


def _string(obj: dict[str, Any], field: str, path: str, limit: int) -> str:
    value = obj.get(field)
    if type(value) is str and 0 < len(value) <= limit:
        return value
    if value is None:
        raise _Invalid(f"{path}: required")
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{path}: must be a non-empty string")
    raise _Invalid(f"{path}: at most {limit} characters")


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


def _measure(data: dict[str, Any], field: str, scale: int) -> int | None:
    """A non-negative measurement as an integer in 1/scale units (cpu_pct in 1/100 %)."""
    value = data.get(field)
    if value is None:
        return None
    if type(value) not in _NUMBER:
        raise _Invalid(f"data.{field}: must be a number")
    if not 0 <= value <= 1e7:  # also refuses NaN
        raise _Invalid(f"data.{field}: must be between 0 and 10000000")
    scaled: int = round(value * scale)
    return scaled


_EPOCH_S = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBER = (int, float)


def parse_time_ms(value: Any) -> int:
    """RFC 3339 with an offset -> epoch milliseconds (finer digits truncated)."""
    if type(value) is not str or not value:
        raise _Invalid("time: required, an RFC 3339 timestamp")
    if len(value) > 40 or not _RFC3339.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise _Invalid(f"time: not an RFC 3339 timestamp: {shown!r}")
    text = _FRACTION.sub(r"\1", value) if len(value) > 32 else value
    try:
        moment = datetime.fromisoformat(text)
        delta = moment - _EPOCH_S
    except ValueError:
        raise _Invalid(f"time: not an RFC 3339 timestamp: {value!r}") from None
    except OverflowError:  # a valid spelling whose UTC instant is before year 1
        raise _Invalid(f"time: {value} is before 2000-01-01", code="too_old") from None
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_time(value: Any) -> datetime:
    return from_ms(parse_time_ms(value))


def key_hash(source: str, event_id: str) -> int:
    """48 bits identifying (source, id) among the few dozen samples of one minute row.

    Two checksums side by side rather than a cryptographic hash: a tag only has to tell the
    samples of one execution-minute apart (about 60), where a 48-bit clash is ~1e-11, and
    it is computed for every sample.
    """
    key = f"{source}\x00{event_id}".encode()
    return (crc32(key) << 16) | (adler32(key) & 0xFFFF)


def key_tag(source: str, event_id: str, canonical: bytes) -> int:
    """The 64-bit per-sample tag kept in minute rows: 48 bits of key, 16 of content.

    Signed, to fit PostgreSQL's bigint.
    """
    unsigned = (key_hash(source, event_id) << 16) | (crc32(canonical) & 0xFFFF)
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


def same_key(tag_a: int, tag_b: int) -> bool:
    """Whether two tags name the same (source, id): their upper 48 bits agree."""
    return (tag_a >> 16) == (tag_b >> 16)


def _validate(
    raw: Any, index: int, now_ms: int, future_tolerance_ms: int, oldest_ms: int
) -> SandboxEvent:
    if type(raw) is not dict:
        raise _Invalid("event: must be a JSON object")
    if raw.get("specversion") != "1.0":
        raise _Invalid('specversion: must be "1.0"')
    event_id = _string(raw, "id", "id", MAX_ID)
    source = _string(raw, "source", "source", MAX_SOURCE)
    event_type = raw.get("type")
    kind = _KINDS.get(event_type) if type(event_type) is str else None
    if kind is None:
        raise _Invalid(f"type: unknown event type {event_type!r}")
    subject = _identifier(raw, "subject", "subject")
    time_ms = parse_time_ms(raw.get("time"))
    data = raw.get("data")
    if type(data) is not dict:
        raise _Invalid("data: must be a JSON object")
    team_id = _identifier(data, "team_id", "data.team_id")
    execution_id = _identifier(data, "execution_id", "data.execution_id")
    if time_ms < oldest_ms:
        raise _too_old(time_ms, oldest_ms, now_ms)
    if kind == "host_stats":
        # The hot path: one a second per running sandbox.
        cpu = _measure(data, "cpu_pct", 100)
        used = _measure(data, "memory_used_mib", 1)
        if time_ms > now_ms + future_tolerance_ms:
            raise _future(time_ms, future_tolerance_ms)
        # For samples the canonical JSON itself is the digest: in-batch duplicates compare it
        # exactly, and only 16 bits of its checksum are kept in the tag.
        canonical = canonical_json(raw)
        return SandboxEvent(index, source, event_id, kind, subject, time_ms, team_id,
                            execution_id, data, canonical, (source, event_id), None, None, None,
                            None, None, cpu, used, key_tag(source, event_id, canonical))
    fields: dict[str, Any] = {}
    if kind in ("created", "resumed"):
        fields["vcpu"] = _int(data, "vcpu", 1, True)
        fields["memory_mib"] = _int(data, "memory_mib", 1, True)
        fields["disk_mib"] = _int(data, "disk_mib", 0, False)
        template = data.get("template_id")
        if template is not None and not isinstance(template, str):
            raise _Invalid("data.template_id: must be a string")
        if template is not None and len(template) > MAX_NAME:
            raise _Invalid(f"data.template_id: at most {MAX_NAME} characters")
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
    if time_ms > now_ms + future_tolerance_ms:
        raise _future(time_ms, future_tolerance_ms)
    digest = digest_of(raw)
    return SandboxEvent(index, source, event_id, kind, subject, time_ms, team_id, execution_id,
                        data, digest, (source, event_id), **fields)


_KINDS = {t: t.rsplit(".", 1)[1] for t in EVENT_TYPES}


def _echoed_id(raw: Any) -> str | None:
    """The event's id as the answer may repeat it: only a plain, bounded string."""
    raw_id = raw.get("id") if type(raw) is dict else None
    if type(raw_id) is not str or len(raw_id) > MAX_ID or "\x00" in raw_id:
        return None
    try:
        raw_id.encode()
    except UnicodeEncodeError:  # a lone surrogate: the answer could not carry it
        return None
    return raw_id


def _too_old(time_ms: int, oldest_ms: int, now_ms: int) -> _Invalid:
    shown = from_ms(time_ms).isoformat() if time_ms >= EARLIEST_MS else "before 2000-01-01"
    if oldest_ms <= EARLIEST_MS:
        return _Invalid(f"time: {shown} is before 2000-01-01", code="too_old")
    days = (now_ms - oldest_ms) // 86_400_000
    return _Invalid(f"time: {shown} is older than the maximum age of {days} days "
                    "(an admin or finance key may backfill older events)", code="too_old")


def _future(time_ms: int, tolerance_ms: int) -> _Invalid:
    return _Invalid(
        f"time: {from_ms(time_ms).isoformat()} is more than {tolerance_ms // 1000} s "
        "in the future",
        code="future_time",
    )


_SECOND_PREFIX = 19  # "2026-11-03T10:15:02"


def _sample_fast(
    raw: Any, index: int, limit_ms: int, oldest_ms: int, seconds: dict[str, int]
) -> SandboxEvent | None:
    """The common well-formed sample (`YYYY-MM-DDTHH:MM:SS.mmmZ`, plain fields), or None to
    let `_validate` decide, and word any error, the long way.

    A fleet sends one sample per sandbox per second, so this path is most of all traffic;
    it makes the same checks as `_validate` with fewer calls, and parses each distinct
    second of a batch once.
    """
    if type(raw) is not dict or raw.get("type") != HOST_STATS or raw.get("specversion") != "1.0":
        return None
    source = raw.get("source")
    event_id = raw.get("id")
    subject = raw.get("subject")
    stamp = raw.get("time")
    data = raw.get("data")
    if not (type(source) is str and type(event_id) is str and type(subject) is str
            and type(stamp) is str and type(data) is dict
            and 0 < len(source) <= MAX_SOURCE and 0 < len(event_id) <= MAX_ID
            and len(stamp) == 24
            and stamp[19] == "." and stamp[23] == "Z" and stamp[20:23].isdigit()):
        return None
    team_id = data.get("team_id")
    execution_id = data.get("execution_id")
    if not (type(team_id) is str and type(execution_id) is str
            and _THREE_IDS.fullmatch(f"{subject}\x00{team_id}\x00{execution_id}")):
        return None
    cpu = data.get("cpu_pct")
    used = data.get("memory_used_mib")
    if cpu is not None:
        if type(cpu) not in _NUMBER or not 0 <= cpu <= 1e7:
            return None
        cpu = round(cpu * 100)
    if used is not None:
        if type(used) not in _NUMBER or not 0 <= used <= 1e7:
            return None
        used = round(used)
    prefix = stamp[:_SECOND_PREFIX]
    second_ms = seconds.get(prefix)
    if second_ms is None:
        try:
            second_ms = parse_time_ms(prefix + "Z")
        except _Invalid:
            return None
        seconds[prefix] = second_ms
    time_ms = second_ms + int(stamp[20:23])
    if time_ms > limit_ms or time_ms < oldest_ms:
        return None
    canonical = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    if len(canonical) > MAX_EVENT_BYTES or b"\\u0000" in canonical:
        return None
    return SandboxEvent(index, source, event_id, "host_stats", subject, time_ms, team_id,
                        execution_id, data, canonical, (source, event_id), None, None, None,
                        None, None, cpu, used, key_tag(source, event_id, canonical))


DEFAULT_MAX_AGE_DAYS = 400


def validate_batch(
    batch: list[Any], now: datetime, future_tolerance_s: int = 300,
    max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
) -> tuple[list[SandboxEvent], list[EventError]]:
    """Split a batch into valid events and per-index errors (in index order).

    Times older than `max_age_days` (None: no maximum age, a deliberate backfill) or before
    2000 are `too_old`: an event's cost grows with the span it opens, so the span is bounded.
    """
    now_ms = to_ms(now)
    tolerance_ms = future_tolerance_s * 1000
    limit_ms = now_ms + tolerance_ms
    oldest_ms = EARLIEST_MS
    if max_age_days is not None:
        oldest_ms = max(oldest_ms, now_ms - max_age_days * 86_400_000)
    valid: list[SandboxEvent] = []
    errors: list[EventError] = []
    seconds: dict[str, int] = {}
    for index, raw in enumerate(batch):
        fast = _sample_fast(raw, index, limit_ms, oldest_ms, seconds)
        if fast is not None:
            valid.append(fast)
            continue
        try:
            valid.append(_validate(raw, index, now_ms, tolerance_ms, oldest_ms))
        except _Invalid as exc:
            errors.append(EventError(index, _echoed_id(raw), exc.code, exc.message))
    return valid, errors
