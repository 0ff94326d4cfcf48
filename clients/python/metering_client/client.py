"""The orchestrator's client for the metering service: events, admissions, kill orders.

    client = MeteringClient("http://metering:8000", key, spool_path=Path("/var/lib/orch/spool"))
    client.emit({"specversion": "1.0", "id": ..., "source": ..., "type": ..., ...})
    decision = client.admit("team_8c1", "sbx_3f9a", vcpu=2, memory_mib=1024)
    page = client.enforcement_actions(after=cursor)
    client.close()

Delivery guarantees for events:
- `emit` only buffers. Background senders post batches cut by count (`max_batch`), size and
  age (`max_delay_s`). A batch that is not acknowledged (connection error, timeout, 408, 429,
  5xx) is re-sent with exponential backoff and full jitter, byte for byte: the same event ids,
  so a batch the service stored but could not answer comes back as duplicates, never as
  double counts.
- With a `spool_path`, a batch that fails is written to an append-only JSON-lines file
  (fsync'd) and dropped from memory; while the service is down, every batch cut goes there.
  The spool is re-sent when the service is back and replayed when a client starts on it, so a
  crash of the orchestrator loses at most what was buffered and never failed (at most
  `max_delay_s` worth, or less after `flush`).
- 413 splits the batch; other 4xx are not retried: the events are counted as rejected,
  logged, and handed to `on_rejected` (a dead-letter hook). Per-event refusals inside a 200
  (`invalid`, `future_time`, `conflict`) are treated the same way.
- Backpressure: once `max_buffer` events are held in memory (the spool does not count),
  `emit` blocks, and raises `Backpressure` after its timeout, instead of growing without bound.

Only the standard library and httpx: the client is its own package (`clients/python`), installed
into the orchestrator without the service, so it must not pull in the service's dependencies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

log = logging.getLogger(__name__)

# Statuses that say "the service could not take this now", not "this batch is wrong".
OUTAGE_STATUSES = frozenset({408, 429, 502, 503, 504})

_JITTER = random.SystemRandom()


class ClientError(Exception):
    """Base of what the client raises."""


class Backpressure(ClientError):
    """`emit` waited its timeout for room in the buffer: the service is not keeping up."""


class MeteringUnavailable(ClientError):
    """A synchronous call (admission, enforcement feed) got no answer after its retries."""


class RequestRefused(ClientError):
    """A synchronous call was answered with an error that retrying cannot fix (e.g. 401)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Event counters since the client started (a snapshot)."""

    emitted: int = 0  # events passed to emit()
    sent: int = 0  # events posted, counting every attempt
    acknowledged: int = 0  # events the service answered 200 for
    accepted: int = 0  # ... of which newly stored
    duplicates: int = 0  # ... of which the service already had (retries, replays)
    rejected: int = 0  # events refused for good (per-event errors, non-retryable 4xx)
    retries: int = 0  # batch attempts after the first
    failures: int = 0  # attempts that were not acknowledged
    spooled: int = 0  # events written to the spool
    replayed: int = 0  # events found in the spool when the client started
    buffered: int = 0  # events held in memory now
    spool_pending: int = 0  # events in the spool not yet acknowledged

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the service refused for good, as the dead-letter hook receives it."""

    event: dict[str, Any]
    status: int  # 200 for a per-event refusal inside an acknowledged batch
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class AdmissionAnswer:
    """The answer to `POST /v1/admissions`: a lease, or a refusal with its reason."""

    admitted: bool
    status: int
    lease_id: str | None = None
    max_duration_s: int | None = None
    expires_at: str | None = None
    reason: str | None = None
    limit: int | str | None = None
    current: int | str | None = None
    message: str | None = None

    @classmethod
    def from_response(cls, status: int, body: Mapping[str, Any]) -> AdmissionAnswer:
        return cls(
            admitted=bool(body.get("admitted")), status=status,
            lease_id=body.get("lease_id"), max_duration_s=body.get("max_duration_s"),
            expires_at=body.get("expires_at"), reason=body.get("reason"),
            limit=body.get("limit"), current=body.get("current"), message=body.get("message"),
        )


@dataclass(frozen=True, slots=True)
class ActionsPage:
    """A page of the kill-order feed; ask again with `after=next_cursor`."""

    data: list[dict[str, Any]]
    next_cursor: str | None


class _Batch:
    """A cut batch. Its events live in `parts` (serialized, one per event) until it is
    spooled; after that only the spool holds them and `parts` is None."""

    __slots__ = ("attempts", "count", "parts", "seq", "spooled")

    def __init__(self, seq: int, parts: list[bytes] | None, count: int, spooled: bool) -> None:
        self.seq = seq
        self.parts = parts
        self.count = count
        self.spooled = spooled
        self.attempts = 0


def _join(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def _split_body(body: bytes) -> list[bytes]:
    return [_serialize(event) for event in json.loads(body)]


def _serialize(event: Any) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


class _Spool:
    """Unacknowledged batches on disk, one JSON line each: `{"batch": N, "events": [...]}`,
    and `{"ack": N}` once the service acknowledged batch N.

    Appends are fsync'd before the batch leaves memory. Acks are not: a lost ack only makes
    the batch come back as duplicates. The file is emptied whenever nothing in it is pending
    and rewritten when mostly acknowledged, so it stays as large as the outage, no larger.
    A lock file keeps a second client off the same spool.
    """

    COMPACT_BYTES = 64 * 1024 * 1024

    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ClientError(f"spool {path} is in use by another client") from None
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._lock = threading.Lock()
        self._index: dict[int, tuple[int, int, int]] = {}  # seq -> (offset, length, events)
        self._size = 0
        self._acked_bytes = 0

    @staticmethod
    def _prefix(seq: int) -> bytes:
        return b'{"batch":%d,"events":' % seq

    def load(self) -> list[tuple[int, int]]:
        """Read the file left by an earlier client; answer its pending (seq, events), oldest
        first, and rewrite the file with only those."""
        pending: dict[int, tuple[bytes, int]] = {}
        with open(self.path, "rb") as f:
            for raw in f:
                line = raw
                try:
                    record = json.loads(line)
                except ValueError:
                    # A torn last line: the crash came before its fsync, so that batch was
                    # never acknowledged as spooled; nothing else can follow it.
                    log.warning("spool: ignoring a torn record", extra={"spool": str(self.path)})
                    break
                if "ack" in record:
                    pending.pop(int(record["ack"]), None)
                elif "batch" in record and isinstance(record.get("events"), list):
                    seq = int(record["batch"])
                    events = record["events"]
                    if not (line.startswith(self._prefix(seq)) and line.endswith(b"}\n")):
                        # Not as this client writes it: normalise, so `read` can slice it.
                        line = self._prefix(seq) + _serialize(events) + b"}\n"
                    pending[seq] = (line, len(events))
        with self._lock:
            self._rewrite([(seq, *pending[seq]) for seq in sorted(pending)])
        return [(seq, pending[seq][1]) for seq in sorted(pending)]

    def _rewrite(self, records: list[tuple[int, bytes, int]]) -> None:
        """Replace the file by these (seq, line, events) records, atomically: a crash leaves
        the old file or the new one."""
        tmp = f"{self.path}.tmp"
        index: dict[int, tuple[int, int, int]] = {}
        offset = 0
        with open(tmp, "wb") as f:
            for seq, line, count in records:
                f.write(line)
                index[seq] = (offset, len(line), count)
                offset += len(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._index = index
        self._size = offset
        self._acked_bytes = 0

    def has_room(self, body_bytes: int) -> bool:
        with self._lock:
            return self._size + body_bytes + 64 <= self.max_bytes

    def append(self, seq: int, body: bytes, count: int) -> None:
        line = self._prefix(seq) + body + b"}\n"
        with self._lock:
            os.write(self._fd, line)
            os.fdatasync(self._fd)
            self._index[seq] = (self._size, len(line), count)
            self._size += len(line)

    def read(self, seq: int) -> bytes:
        """The batch's body (the JSON array), as it was first sent."""
        with self._lock:
            offset, length, _ = self._index[seq]
            line = os.pread(self._fd, length, offset)
        prefix = self._prefix(seq)
        if not line.startswith(prefix) or not line.endswith(b"}\n"):
            raise ClientError(f"spool {self.path}: record {seq} is damaged")
        return line[len(prefix):-2]

    def ack(self, seq: int) -> None:
        with self._lock:
            entry = self._index.pop(seq, None)
            if entry is None:
                return
            self._acked_bytes += entry[1]
            if not self._index:
                os.ftruncate(self._fd, 0)
                self._size = 0
                self._acked_bytes = 0
            elif self._acked_bytes > self.COMPACT_BYTES and self._acked_bytes * 2 > self._size:
                records = [(s, os.pread(self._fd, length, offset), count)
                           for s, (offset, length, count) in sorted(self._index.items())]
                self._rewrite(records)
            else:
                line = b'{"ack":%d}\n' % seq
                os.write(self._fd, line)
                self._size += len(line)

    def pending_events(self) -> int:
        with self._lock:
            return sum(count for _, _, count in self._index.values())

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
            os.close(self._lock_fd)


class MeteringClient:
    """Buffered, retrying, spooling event sender, plus the synchronous calls the
    orchestrator makes (admissions, the kill-order feed). Thread-safe."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_batch: int = 1000,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_delay_s: float = 1.0,  # float-ok: seconds
        spool_path: str | Path | None = None,
        max_spool_bytes: int = 1024 * 1024 * 1024,
        max_buffer: int = 100_000,
        emit_timeout_s: float | None = 30.0,  # float-ok: seconds
        timeout_s: float = 10.0,  # float-ok
        concurrency: int = 2,
        backoff_base_s: float = 0.1,  # float-ok
        backoff_max_s: float = 10.0,  # float-ok
        on_rejected: Callable[[list[Rejection]], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_buffer < max_batch or concurrency < 1:
            raise ValueError("need max_batch >= 1, max_buffer >= max_batch, concurrency >= 1")
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_delay_s = max_delay_s
        self.max_buffer = max_buffer
        self.emit_timeout_s = emit_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.on_rejected = on_rejected
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}",
                     "User-Agent": "metering-client/0.1"},
            limits=httpx.Limits(max_connections=concurrency + 4,
                                max_keepalive_connections=concurrency + 4),
        )
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # senders wait here
        self._room = threading.Condition(self._lock)  # emit waits here for buffer room
        self._done = threading.Condition(self._lock)  # flush waits here
        self._buffer: deque[bytes] = deque()
        self._buffer_bytes = 0
        self._buffer_since = 0.0  # monotonic time the oldest buffered event arrived
        self._backlog: deque[_Batch] = deque()  # cut, not yet acknowledged, not in flight
        self._in_flight = 0
        self._in_memory = 0  # events in the buffer and in batches that are not spooled
        self._unsettled = 0  # events neither acknowledged nor rejected yet
        self._failures = 0  # consecutive unacknowledged attempts: the service is down
        self._retry_at = 0.0
        self._flushing = 0
        self._stopping = False
        self._closed = False
        self._next_seq = 1
        self._id = secrets.token_hex(4)
        self._counts: dict[str, int] = {f.name: 0 for f in fields(ClientStats)}

        self._spool: _Spool | None = None
        if spool_path is not None:
            self._spool = _Spool(Path(spool_path), max_spool_bytes)
            for seq, count in self._spool.load():
                self._backlog.append(_Batch(seq, None, count, spooled=True))
                self._unsettled += count
                self._counts["replayed"] += count
                self._next_seq = max(self._next_seq, seq + 1)
            if self._backlog:
                log.info("spool: replaying %d events", self._counts["replayed"])
        self._senders = [threading.Thread(target=self._run, name=f"metering-sender-{i}",
                                          daemon=True) for i in range(concurrency)]
        for sender in self._senders:
            sender.start()

    def __repr__(self) -> str:  # never the key
        return f"MeteringClient({str(self._http.base_url)!r})"

    def __enter__(self) -> MeteringClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ events

    def emit(self, event: Mapping[str, Any], timeout: float | None = None) -> None:  # float-ok
        """Buffer one CloudEvent. Blocks while the buffer is full; raises `Backpressure`
        after `timeout` (default `emit_timeout_s`; None waits for ever)."""
        if not isinstance(event.get("id"), str) or not isinstance(event.get("source"), str):
            # The (source, id) pair is what makes a retry a duplicate instead of a new event.
            raise ValueError("an event needs string `source` and `id`")
        part = _serialize(event)  # now: the caller may reuse its dict, and errors surface here
        limit = self.emit_timeout_s if timeout is None else timeout
        with self._lock:
            if self._closed or self._stopping:
                raise ClientError("the client is closed")
            if self._in_memory >= self.max_buffer:
                deadline = None if limit is None else time.monotonic() + limit
                while self._in_memory >= self.max_buffer:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise Backpressure(
                            f"{self._in_memory} events buffered (max_buffer={self.max_buffer})")
                    self._room.wait(remaining)
                    if self._stopping:
                        raise ClientError("the client is closed")
            if not self._buffer:
                self._buffer_since = time.monotonic()
                self._work.notify()
            self._buffer.append(part)
            self._buffer_bytes += len(part)
            self._in_memory += 1
            self._unsettled += 1
            self._counts["emitted"] += 1
            if len(self._buffer) == self.max_batch:
                self._work.notify()

    def flush(self, timeout: float | None = None) -> bool:  # float-ok
        """Send everything emitted so far; True once all of it is acknowledged (or refused
        for good), False if `timeout` passed first (it stays buffered or spooled)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._work.notify_all()
            try:
                while self._unsettled > 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._done.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = 30.0) -> None:  # float-ok
        """Flush (up to `timeout`), stop the senders, and spool what is still unsent so the
        next client on the same spool delivers it. Without a spool it is logged as lost."""
        with self._lock:
            if self._closed:
                return
        delivered = self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._room.notify_all()
        for sender in self._senders:
            sender.join()
        if not delivered:
            self._keep_unsent()
        with self._lock:
            self._closed = True
        if self._spool is not None:
            self._spool.close()
        self._http.close()

    def _keep_unsent(self) -> None:
        with self._lock:
            batches = [b for b in self._backlog if not b.spooled]
            while self._buffer:
                batches.append(self._cut())
        lost = 0
        for batch in batches:
            assert batch.parts is not None
            body = _join(batch.parts)
            if self._spool is not None and self._spool.has_room(len(body)):
                self._spool.append(batch.seq, body, batch.count)
                with self._lock:
                    self._counts["spooled"] += batch.count
            else:
                lost += batch.count
        if lost:
            log.error("metering client closed with %d events undelivered and not spooled", lost)

    def stats(self) -> ClientStats:
        with self._lock:
            counts = dict(self._counts)
            counts["buffered"] = self._in_memory
        counts["spool_pending"] = self._spool.pending_events() if self._spool else 0
        return ClientStats(**counts)

    # The senders: each loops on "what is there to do", done under the lock, and does it
    # (network or disk) outside the lock.

    def _run(self) -> None:
        while True:
            step = self._next_step()
            if step is None:
                return
            action, batch = step
            try:
                if action == "spool":
                    self._spool_batch(batch)
                else:
                    self._send(batch)
            except Exception:
                # A sender must not die: the batch goes back and is tried again later.
                log.exception("metering client: unexpected error; the batch will be retried")
                self._requeue(batch, outage=True, retry_after=None, in_flight=action == "send")

    def _ready_to_cut(self, now: float) -> bool:  # float-ok
        return bool(self._buffer) and (
            len(self._buffer) >= self.max_batch
            or self._buffer_bytes >= self.max_batch_bytes
            or now - self._buffer_since >= self.max_delay_s
            or self._flushing > 0
        )

    def _cut(self) -> _Batch:
        parts: list[bytes] = []
        size = 0
        while self._buffer and len(parts) < self.max_batch:
            nxt = len(self._buffer[0])
            if parts and size + nxt > self.max_batch_bytes:
                break
            parts.append(self._buffer.popleft())
            size += nxt
        self._buffer_bytes -= size
        # The rest of the buffer starts a new age: it waits at most one more max_delay_s.
        self._buffer_since = time.monotonic()
        batch = _Batch(self._next_seq, parts, len(parts), spooled=False)
        self._next_seq += 1
        return batch

    def _next_step(self) -> tuple[str, _Batch] | None:
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                down = self._failures > 0
                if down and self._spool is not None and self._ready_to_cut(now):
                    # Nothing gets through: keep new batches on disk, not in memory.
                    return "spool", self._cut()
                # While down, one request at a time probes the service.
                may_send = now >= self._retry_at and (not down or self._in_flight == 0)
                if may_send and self._backlog:
                    self._in_flight += 1
                    return "send", self._backlog.popleft()
                if may_send and self._ready_to_cut(now):
                    self._in_flight += 1
                    return "send", self._cut()
                waits = []
                if not may_send and now < self._retry_at:
                    waits.append(self._retry_at - now)
                if self._buffer and not self._ready_to_cut(now):
                    waits.append(self._buffer_since + self.max_delay_s - now)
                # Otherwise a send, an emit or a flush notifies.
                self._work.wait(min(waits) if waits else None)
            return None

    def _spool_batch(self, batch: _Batch) -> None:
        assert batch.parts is not None
        body = _join(batch.parts)
        spooled = self._spool is not None and self._spool.has_room(len(body))
        if spooled:
            assert self._spool is not None
            self._spool.append(batch.seq, body, batch.count)
        with self._lock:
            if spooled:
                batch.spooled = True
                batch.parts = None
                self._in_memory -= batch.count
                self._counts["spooled"] += batch.count
                self._room.notify_all()
            self._backlog.append(batch)
            self._work.notify()

    def _body(self, batch: _Batch) -> bytes:
        if batch.parts is not None:
            return _join(batch.parts)
        assert self._spool is not None
        return self._spool.read(batch.seq)

    def _send(self, batch: _Batch) -> None:
        body = self._body(batch)
        with self._lock:
            self._counts["sent"] += batch.count
            if batch.attempts:
                self._counts["retries"] += 1
        batch.attempts += 1
        # Names the attempt in the service's access log, to match the two sides' logs.
        request_id = f"{self._id}-{batch.seq}-{batch.attempts}"
        try:
            response = self._http.post("/v1/events", content=body, headers={
                "Content-Type": "application/cloudevents-batch+json",
                "X-Request-Id": request_id})
        except httpx.TransportError as exc:
            # Refused, reset, or timed out: the service may or may not have stored it; the
            # same ids make either case safe to send again.
            log.warning("metering: batch %s not acknowledged (%s); will retry", request_id,
                        type(exc).__name__)
            self._failed(batch, body, outage=True, retry_after=None)
            return
        status = response.status_code
        answer: Any = None
        if status == 200:
            with contextlib.suppress(ValueError):
                answer = response.json()
        if isinstance(answer, dict):
            self._acknowledged(batch, body, answer)
        elif status == 413:
            self._split(batch, body)
        elif status in OUTAGE_STATUSES or status >= 500 or status == 200:
            # (A 200 that is not the service's answer came from something in between.)
            log.warning("metering: batch %s answered %d; will retry", request_id, status)
            self._failed(batch, body, outage=status in OUTAGE_STATUSES,
                         retry_after=_retry_after(response))
        else:
            log.error("metering: batch %s of %d events refused with %d, not retried: %s",
                      request_id, batch.count, status, response.text[:300])
            events = json.loads(body)
            code = _error_code(response)
            self._settle(batch, rejected=[
                Rejection(e, status, code, response.text[:300]) for e in events])

    def _acknowledged(self, batch: _Batch, body: bytes, answer: dict[str, Any]) -> None:
        rejected: list[Rejection] = []
        errors = answer.get("errors") or []
        if errors:
            events = json.loads(body)
            codes: dict[str, int] = {}
            for error in errors:
                index = int(error.get("index", -1))
                event = events[index] if 0 <= index < len(events) else {}
                code = str(error.get("code", "invalid"))
                codes[code] = codes.get(code, 0) + 1
                rejected.append(Rejection(event, 200, code, str(error.get("message", ""))))
            log.warning("metering: %d events rejected by the service: %s", len(errors), codes)
        with self._lock:
            self._counts["acknowledged"] += batch.count
            self._counts["accepted"] += int(answer.get("accepted", 0))
            self._counts["duplicates"] += int(answer.get("duplicates", 0))
            self._failures = 0
            self._retry_at = 0.0
        self._settle(batch, rejected)

    def _settle(self, batch: _Batch, rejected: list[Rejection]) -> None:
        """The batch is done (acknowledged or refused for good): free it."""
        if batch.spooled:
            assert self._spool is not None
            self._spool.ack(batch.seq)
        with self._lock:
            self._in_flight -= 1
            self._counts["rejected"] += len(rejected)
            if not batch.spooled:
                self._in_memory -= batch.count
                self._room.notify_all()
            self._unsettled -= batch.count
            self._work.notify_all()
            if self._unsettled == 0:
                self._done.notify_all()
        if rejected and self.on_rejected is not None:
            try:
                self.on_rejected(rejected)
            except Exception:
                log.exception("metering client: on_rejected raised")

    def _split(self, batch: _Batch, body: bytes) -> None:
        """413: send the halves. A single event too large for any batch is refused."""
        parts = batch.parts if batch.parts is not None else _split_body(body)
        if len(parts) == 1:
            self._settle(batch, [Rejection(json.loads(parts[0]), 413, "payload_too_large",
                                           "the event alone exceeds the service's limits")])
            return
        middle = len(parts) // 2
        with self._lock:
            halves = []
            for half in (parts[:middle], parts[middle:]):
                halves.append(_Batch(self._next_seq, half, len(half), spooled=False))
                self._next_seq += 1
        if batch.spooled:
            # The halves are on disk before the whole leaves it: a crash between the two
            # writes replays both (duplicates), never neither.
            assert self._spool is not None
            for half_batch in halves:
                assert half_batch.parts is not None
                self._spool.append(half_batch.seq, _join(half_batch.parts), half_batch.count)
                half_batch.parts = None
                half_batch.spooled = True
            self._spool.ack(batch.seq)
        with self._lock:
            self._in_flight -= 1
            for half_batch in reversed(halves):
                self._backlog.appendleft(half_batch)
            self._work.notify_all()

    def _failed(self, batch: _Batch, body: bytes, *, outage: bool,
                retry_after: float | None) -> None:  # float-ok
        if (not batch.spooled and self._spool is not None
                and self._spool.has_room(len(body))):
            self._spool.append(batch.seq, body, batch.count)
            with self._lock:
                batch.spooled = True
                batch.parts = None
                self._in_memory -= batch.count
                self._counts["spooled"] += batch.count
                self._room.notify_all()
        self._requeue(batch, outage=outage, retry_after=retry_after, in_flight=True)

    def _requeue(self, batch: _Batch, *, outage: bool, retry_after: float | None,  # float-ok
                 in_flight: bool) -> None:
        with self._lock:
            if in_flight:
                self._in_flight -= 1
            self._counts["failures"] += 1
            self._failures += 1
            # (The exponent is capped: an outage of hours must not overflow a float.)
            exponent = min(self._failures - 1, 32)
            ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** exponent)
            delay = _JITTER.uniform(0, ceiling)  # full jitter: many clients don't stampede
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.backoff_max_s))
            self._retry_at = time.monotonic() + delay
            if outage:
                # The service was unavailable, the batch is not to blame: it keeps its place.
                self._backlog.appendleft(batch)
            else:
                # A 500 might be this batch's doing: let the others through first.
                self._backlog.append(batch)
            self._work.notify_all()

    # ------------------------------------------------------------------ synchronous calls

    def _call(self, method: str, path: str, *, attempts: int,
              accept: Callable[[httpx.Response], bool], **kwargs: Any) -> httpx.Response:
        """One idempotent request, retried on transport errors and outage statuses."""
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(_JITTER.uniform(0, min(self.backoff_max_s,
                                                 self.backoff_base_s * 2 ** attempt)))
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = type(exc).__name__
                continue
            if accept(response):
                return response
            if response.status_code in OUTAGE_STATUSES or response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            raise RequestRefused(response.status_code, response.text)
        raise MeteringUnavailable(f"{method} {path}: no answer after {attempts} attempts ({last})")

    def admit(
        self, team_id: str, sandbox_id: str, vcpu: int, memory_mib: int, *,
        disk_mib: int | None = None, timeout_s: int | None = None, attempts: int = 3,
    ) -> AdmissionAnswer:
        """Ask whether the team may start this sandbox. Retried on outages: the service
        answers the same lease to the same `sandbox_id`, so a retry never takes two slots.
        Raises `MeteringUnavailable` when no answer came: failing open or closed is the
        orchestrator's policy to choose."""
        body: dict[str, Any] = {"team_id": team_id, "sandbox_id": sandbox_id, "vcpu": vcpu,
                                "memory_mib": memory_mib}
        if disk_mib is not None:
            body["disk_mib"] = disk_mib
        if timeout_s is not None:
            body["timeout_s"] = timeout_s

        def decided(response: httpx.Response) -> bool:
            # A refusal (402/403/429) carries `admitted: false`; a 429 without it is some
            # proxy's rate limit, to be retried.
            if response.status_code not in (200, 402, 403, 429):
                return False
            with contextlib.suppress(ValueError):
                return "admitted" in response.json()
            return False

        response = self._call("POST", "/v1/admissions", json=body, attempts=attempts,
                              accept=decided)
        return AdmissionAnswer.from_response(response.status_code, response.json())

    def enforcement_actions(
        self, after: str | None = None, limit: int = 100, attempts: int = 3
    ) -> ActionsPage:
        """One page of kill orders issued after the cursor, oldest first."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        response = self._call("GET", "/v1/enforcement/actions", params=params,
                              attempts=attempts, accept=lambda r: r.status_code == 200)
        page = response.json()
        return ActionsPage(list(page.get("data", [])), page.get("next_cursor"))


def _retry_after(response: httpx.Response) -> float | None:  # float-ok
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)  # float-ok
    except ValueError:
        return None  # an HTTP date: the backoff decides


def _error_code(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(response.json()["error"]["code"])
    return f"http_{response.status_code}"
