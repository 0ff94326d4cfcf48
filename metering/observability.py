"""Observability: Prometheus metrics, request ids, and one JSON log line per request.

Wiring (one line each):
- `install(app)` in the app factory: the request middleware and `GET /metrics`;
- `configure_json_logging(level)` once per process (CLI entry and each API process);
- `observe_job(name, seconds, failed)` from the scheduler's job wrapper, and
  `observe_job_skipped(name, why)` from its listener for runs that did not happen;
- `observe_kill_orders(reasons)` where the enforcement sweep issues kill orders.

The middleware measures ingest and admissions from the contract's own answers (the counts of
`POST /v1/events`, the `reason` of `POST /v1/admissions`), so the endpoints carry no metrics
code. Figures that live in the database (open executions, webhook and Stripe backlogs) are
read at scrape time by a few cheap, index-backed queries, cached for a few seconds so that
several scrapers do not multiply them.

Processes: each process has its own registry. One API process per pod/container (the
recommended layout) needs nothing more. `metering serve --workers N` on one host should call
`prepare_multiprocess(N)` before any metric is recorded: it points prometheus_client's
multiprocess mode at a fresh directory, so `/metrics` of any worker answers the sum of all.
prometheus_client is imported lazily for that reason: its mode is fixed at import.
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TextIO, cast

import orjson
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
access_log = logging.getLogger("metering.access")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REQUEST_ID_HEADER = "x-request-id"
# An incoming id is echoed only if it is plainly an id: it goes into every log line.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Health probes and scrapes come every few seconds: logged at DEBUG, not INFO.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# An open dashboard refreshes every few seconds and loads its own files: its successful
# requests are DEBUG too, or one browser tab would fill the service's terminal.
_QUIET_PREFIXES = ("/dashboard/", "/favicon")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None)


def current_request_id() -> str | None:
    return request_id_var.get()


# --------------------------------------------------------------------------- metrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000)


@dataclass(frozen=True)
class _Metrics:
    registry: CollectorRegistry
    multiprocess: bool
    http_requests: Counter
    http_duration: Histogram
    events: Counter
    rejections: Counter
    ingest_duration: Histogram
    ingest_batch: Histogram
    admissions: Counter
    admission_duration: Histogram
    admission_paths: Counter
    kill_orders: Counter
    job_duration: Histogram
    job_failures: Counter
    invoice_verifications: Counter
    job_skips: Counter


@lru_cache(maxsize=1)
def _metrics() -> _Metrics:
    """The process's metrics, made on first use (see the module's note on multiprocess)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    multiprocess = bool(os.environ.get(MULTIPROC_ENV))
    registry = CollectorRegistry(auto_describe=True)
    if not multiprocess:
        # Per-process figures (RSS, CPU, fds) are only meaningful for a single process.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    r = registry
    return _Metrics(
        registry=registry,
        multiprocess=multiprocess,
        http_requests=Counter("metering_http_requests", "HTTP requests answered.",
                              ["method", "route", "status"], registry=r),
        http_duration=Histogram("metering_http_request_duration_seconds",
                                "Time to answer an HTTP request.", ["method", "route"],
                                buckets=LATENCY_BUCKETS, registry=r),
        events=Counter("metering_ingest_events",
                       "Events in acknowledged ingest batches, by outcome.",
                       ["type"], registry=r),
        rejections=Counter("metering_ingest_rejections",
                           "Events refused inside acknowledged batches, by error code.",
                           ["code"], registry=r),
        ingest_duration=Histogram("metering_ingest_duration_seconds",
                                  "Time to read, store and commit an acknowledged batch.",
                                  buckets=LATENCY_BUCKETS, registry=r),
        ingest_batch=Histogram("metering_ingest_batch_events", "Events per acknowledged batch.",
                               buckets=BATCH_BUCKETS, registry=r),
        admissions=Counter("metering_admission_decisions",
                           "Admission decisions: `admitted`, or the refusal's reason.",
                           ["reason"], registry=r),
        admission_duration=Histogram("metering_admission_duration_seconds",
                                     "Time to decide an admission.",
                                     buckets=LATENCY_BUCKETS, registry=r),
        admission_paths=Counter(
            "metering_admission_paths",
            "How admissions were answered: `loop` (on the event loop), `thread` (a team whose "
            "decision needs money figures, or a new team), `fallback` (database trouble on "
            "the loop; the thread answered).", ["path"], registry=r),
        kill_orders=Counter("metering_kill_orders_issued", "Kill orders issued, by reason.",
                            ["reason"], registry=r),
        job_duration=Histogram("metering_job_duration_seconds", "Background job run time.",
                               ["job"], buckets=JOB_BUCKETS, registry=r),
        job_failures=Counter("metering_job_failures", "Background job runs that raised.",
                             ["job"], registry=r),
        invoice_verifications=Counter(
            "metering_invoice_verifications",
            "Invoices re-derived from raw events: `ok`, or `difference` (held as a draft by a "
            "close, or reported by verify).", ["result"], registry=r),
        job_skips=Counter(
            "metering_job_runs_skipped",
            "Scheduled job runs that did not happen: `running` (the previous run was still "
            "going), `missed` (the scheduler got to it too late).", ["job", "why"],
            registry=r),
    )


def observe_ingest(result: Mapping[str, Any], seconds: float) -> None:  # float-ok
    """Count one acknowledged `POST /v1/events` answer (`{"accepted", "duplicates",
    "rejected", "errors"}`) and its latency."""
    m = _metrics()
    accepted = int(result.get("accepted", 0))
    duplicates = int(result.get("duplicates", 0))
    rejected = int(result.get("rejected", 0))
    m.events.labels("accepted").inc(accepted)
    m.events.labels("duplicate").inc(duplicates)
    m.events.labels("rejected").inc(rejected)
    codes: dict[str, int] = {}
    for error in result.get("errors") or ():
        code = str(error.get("code", "invalid")) if isinstance(error, Mapping) else "invalid"
        codes[code] = codes.get(code, 0) + 1
    for code, count in codes.items():
        m.rejections.labels(code).inc(count)
    m.ingest_duration.observe(seconds)
    m.ingest_batch.observe(accepted + duplicates + rejected)


def observe_admission(reason: str | None, seconds: float) -> None:  # float-ok
    """Count one admission decision: `reason` None when admitted, else the refusal's."""
    m = _metrics()
    m.admissions.labels(reason or "admitted").inc()
    m.admission_duration.observe(seconds)


def observe_admission_path(path: str) -> None:
    _metrics().admission_paths.labels(path).inc()


def observe_job(name: str, seconds: float, failed: bool = False) -> None:  # float-ok
    """Record one run of a background job."""
    m = _metrics()
    m.job_duration.labels(name).observe(seconds)
    if failed:
        m.job_failures.labels(name).inc()


def observe_invoice_verifications(ok: int, failed: int) -> None:
    """Count invoices checked against their raw events, by result."""
    m = _metrics()
    m.invoice_verifications.labels("ok").inc(ok)
    m.invoice_verifications.labels("difference").inc(failed)


def observe_job_skipped(name: str, why: str) -> None:
    """Count one scheduled run of a job that did not happen (`running` or `missed`)."""
    _metrics().job_skips.labels(name, why).inc()


def observe_kill_orders(reasons: Iterable[str]) -> None:
    """Count kill orders just issued (one reason each)."""
    m = _metrics()
    for reason in reasons:
        m.kill_orders.labels(reason).inc()


# --------------------------------------------------------------------------- database gauges


@dataclass(frozen=True)
class _Gauge:
    name: str
    help: str
    sql: str


# Each query is served by an index or touches a small table: a scrape costs milliseconds
# however large the event tables grow.
DATABASE_GAUGES = (
    _Gauge("metering_open_executions",
           "Executions started and not yet ended or settled (running or about to go stale).",
           "SELECT count(*) FROM executions WHERE end_at IS NULL AND inferred_end_at IS NULL"),
    _Gauge("metering_pending_samples_estimate",
           "Samples waiting to be folded into minute rows (planner estimate; grows if the "
           "fold falls behind).",
           "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint "
           "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
           "WHERE i.inhparent = to_regclass('host_stats_pending')"),
    _Gauge("metering_webhook_outbox_pending",
           "Signed orchestrator messages (kill orders, notifications) not yet delivered.",
           "SELECT count(*) FROM outbox_messages "
           "WHERE delivered_at IS NULL AND abandoned_at IS NULL"),
    _Gauge("metering_webhook_outbox_retrying",
           "Undelivered messages whose delivery already failed at least once.",
           "SELECT count(*) FROM outbox_messages "
           "WHERE delivered_at IS NULL AND abandoned_at IS NULL AND attempts > 0"),
    _Gauge("metering_webhook_outbox_oldest_pending_seconds",
           "Age of the oldest undelivered message (0 when none).",
           "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox_messages "
           "WHERE delivered_at IS NULL AND abandoned_at IS NULL"),
    _Gauge("metering_webhook_outbox_abandoned",
           "Messages given up on after the maximum age (never delivered).",
           "SELECT count(*) FROM outbox_messages WHERE abandoned_at IS NOT NULL"),
    _Gauge("metering_stripe_sync_pending",
           "Finalized invoices with money due, not yet synced to Stripe.",
           "SELECT count(*) FROM invoices WHERE status = 'finalized' AND total > 0"),
    _Gauge("metering_stripe_sync_failed",
           "Invoices with money due whose Stripe sync failed (retried; visible to finance).",
           "SELECT count(*) FROM invoices WHERE status = 'sync_failed' AND total > 0"),
    _Gauge("metering_stripe_sync_oldest_pending_seconds",
           "Age of the oldest finalized or sync-failed invoice awaiting Stripe (0 when none).",
           "SELECT coalesce(extract(epoch FROM now() - min(finalized_at)), 0) FROM invoices "
           "WHERE status IN ('finalized', 'sync_failed') AND total > 0"),
)


class DatabaseGauges:
    """Reads the database-held figures at scrape time. A query that fails (the database is
    down, a table not there yet) drops its gauge from that scrape instead of failing the
    scrape; `metering_database_up` says whether the database answered at all."""

    def __init__(
        self, engine: Engine, ttl_s: float = 5.0, timeout_ms: int = 2000  # float-ok
    ) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.timeout_ms = timeout_ms
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._values: dict[str, float] = {}
        self._up = 0.0

    def _read(self) -> None:
        values: dict[str, float] = {}
        up = 0.0
        try:
            with self.engine.connect() as conn:
                # LOCAL: the setting ends with this transaction, not with the pooled connection.
                conn.execute(text(f"SET LOCAL statement_timeout = {int(self.timeout_ms)}"))
                up = 1.0
                for gauge in DATABASE_GAUGES:
                    try:
                        with conn.begin_nested():
                            value = conn.execute(text(gauge.sql)).scalar()
                    except SQLAlchemyError as exc:
                        if conn.invalidated:
                            raise
                        log.debug("metrics query failed", extra={"metric": gauge.name,
                                                                 "error": type(exc).__name__})
                        continue
                    values[gauge.name] = float(value or 0)  # float-ok
                conn.rollback()
        except SQLAlchemyError as exc:
            up = 0.0
            log.warning("metrics: database unreachable", extra={"error": type(exc).__name__})
        self._values, self._up = values, up

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.ttl_s:
                self._read()
                self._read_at = now
            values, up = dict(self._values), self._up
        yield GaugeMetricFamily("metering_database_up",
                                "1 if the scrape's database queries could connect.", value=up)
        for gauge in DATABASE_GAUGES:
            if gauge.name in values:
                yield GaugeMetricFamily(gauge.name, gauge.help, value=values[gauge.name])


class _Scrape:
    """What one scrape exposes: the process's (or all processes') metrics and, when an
    engine is given, the database gauges."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


def render_metrics(database: DatabaseGauges | None = None) -> bytes:
    """The Prometheus text exposition of this process (all processes in multiprocess mode)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    m = _metrics()
    parts: list[Any] = []
    if m.multiprocess:
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        parts.append(merged)
    else:
        parts.append(m.registry)
    if database is not None:
        parts.append(database)
    return generate_latest(cast("Collector", _Scrape(parts)))


METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prepare_multiprocess(workers: int) -> str | None:
    """Before `serve --workers N` (N > 1) starts its processes: aggregate metrics across them.

    Uses `PROMETHEUS_MULTIPROC_DIR` if set (emptied: files of a past run would add up),
    else a temporary directory removed at exit. Must run before any metric is recorded in
    this process; the worker processes inherit the environment."""
    directory = os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not directory:
        return None
    if _metrics.cache_info().currsize:
        log.warning("metrics were recorded before multiprocess mode was set: this "
                    "process's own figures will be missing from /metrics")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
    else:
        directory = tempfile.mkdtemp(prefix="metering-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        atexit.register(shutil.rmtree, directory, True)
    return directory


def start_metrics_server(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """Serve this process's metrics on their own port: for `metering worker`, which has no
    HTTP API (its job durations and kill orders live in its own registry)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = render_metrics()
            self.send_response(200)
            self.send_header("Content-Type", METRICS_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not worth a log line

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    log.info("metrics served", extra={"port": server.server_address[1]})
    return server


# --------------------------------------------------------------------------- middleware


class RequestObservability:
    """ASGI middleware: request id, one access log line, request metrics, and the ingest and
    admission figures read off their answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope) or _new_request_id()
        token = request_id_var.set(request_id)
        method: str = scope["method"]
        path: str = scope["path"]
        # The two answers worth reading: both are a few dozen bytes.
        watched = method == "POST" and path in ("/v1/events", "/v1/admissions")
        status = 500
        body = bytearray()
        header = (b"x-request-id", request_id.encode())

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), header]
            elif watched and message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template: str | None = getattr(route, "path", None)
            try:
                _record(method, path, template, status, elapsed, bytes(body) if watched else b"")
            except Exception:
                log.exception("recording request metrics failed")
            request_id_var.reset(token)


# Request ids are unique, not secret: a random prefix per process and a counter, so that
# naming a request costs no system call on the event loop (`secrets` reads the kernel's
# random source every time). 24 hex characters, as before.
_request_prefix: tuple[int, str] = (0, "")  # (pid, prefix): a forked child draws its own
_request_numbers = itertools.count()


def _new_request_id() -> str:
    global _request_prefix  # noqa: PLW0603 - the process's prefix, drawn once per process
    pid, prefix = _request_prefix
    if pid != os.getpid():
        pid, prefix = _request_prefix = (os.getpid(), secrets.token_hex(6))
    return f"{prefix}{next(_request_numbers) & 0xFFFFFFFFFFFF:012x}"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID_REQUEST_ID.fullmatch(candidate) else None
    return None


def _record(method: str, path: str, template: str | None, status: int, seconds: float,  # float-ok
            body: bytes) -> None:
    m = _metrics()
    label = template or "unmatched"
    m.http_requests.labels(method, label, str(status)).inc()
    m.http_duration.labels(method, label).observe(seconds)
    if body and template == "/v1/events" and status == 200:
        answer = orjson.loads(body)
        if isinstance(answer, dict):
            observe_ingest(answer, seconds)
    elif body and template == "/v1/admissions" and status in (200, 402, 403, 429):
        answer = orjson.loads(body)
        if isinstance(answer, dict) and "admitted" in answer:
            observe_admission(None if answer["admitted"] else str(answer.get("reason")), seconds)
    quiet = path in _QUIET_PATHS or (path.startswith(_QUIET_PREFIXES) and status < 400)
    level = logging.DEBUG if quiet else logging.INFO
    if access_log.isEnabledFor(level):
        # The template, never the raw path of a matched route (it is the same for everyone
        # and holds no ids); an unmatched path is shown cut short.
        access_log.log(level, "request", extra={
            "method": method, "path": template or path[:200], "status": status,
            "duration_ms": round(seconds * 1000, 2)})


def install(app: FastAPI, database_ttl_s: float = 5.0) -> None:  # float-ok
    """Add the request middleware and `GET /metrics` (with the database gauges read through
    the app's engine) to the app. Call before the app starts serving."""
    database = DatabaseGauges(app.state.engine, ttl_s=database_ttl_s)
    app.state.database_gauges = database

    def metrics(_: Request) -> Response:
        from starlette.responses import Response

        return Response(render_metrics(database), media_type=METRICS_CONTENT_TYPE)

    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestObservability)


# --------------------------------------------------------------------------- logging

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id when there
    is one, and whatever the call passed in `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so configuring twice replaces it."""


def configure_json_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record (uvicorn's included, once it propagates) to stderr as JSON.
    Idempotent: a second call replaces the first's handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _OurHandler) or type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    handler = _OurHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
