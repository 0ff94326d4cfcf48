"""The composition root: the HTTP application wiring metering and billing together.

Billing is the outer package (it may import metering, never the reverse), so the app and the
CLI that wire both live here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from billing.accounts import endpoints as accounts_endpoints
from billing.charges import endpoints as charges_endpoints
from billing.dashboard import endpoints as dashboard_endpoints
from billing.invoices import endpoints as invoice_endpoints
from billing.plans import endpoints as plan_endpoints
from billing.plans import service as plan_service
from billing.stripe_sync.webhooks import router as stripe_router
from metering import db_async, migrate, observability, plugins
from metering.admissions import endpoints as admission_endpoints
from metering.api import connections, throttle
from metering.api.errors import ERROR_RESPONSES, api_error, error_response
from metering.api.long_reads import LongReads
from metering.auth import endpoints as keys_endpoints
from metering.auth.service import ensure_key
from metering.config import Settings, configure_clock, get_settings
from metering.db import make_engine, make_sessionmaker, resolve_database_url, transaction
from metering.enforcement import endpoints as enforcement_endpoints
from metering.errors import MeteringError
from metering.ingest import endpoints as ingest_endpoints
from metering.ingest.endpoints import IngestHelpers
from metering.usage import endpoints as usage_endpoints

log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"code": code, "message": message, **details}})


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        problems.append({"field": loc, "message": err.get("msg", "invalid")})
    text_ = "; ".join(f"{p['field']}: {p['message']}" for p in problems) or "invalid request"
    return text_, problems


def metering_response(exc: MeteringError) -> JSONResponse:
    # Storage down or at capacity (here or in a helper process): when to come back.
    headers = None if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse(status_code=exc.status_code, content=exc.body(), headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MeteringError)
    async def metering_error(_: Request, exc: MeteringError) -> JSONResponse:
        return metering_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The key comes first: a request without one learns that, not what its body lacks
        # (FastAPI judges a body that is not JSON before any dependency runs).
        path = request.url.path
        if (path.startswith("/v1/") and path != "/v1/stripe/webhook"
                and "authorization" not in request.headers):
            return _error(401, "unauthorized", "missing API key: send Authorization: Bearer <key>")
        message, problems = _validation_message(exc)
        return _error(422, "invalid_request", message, fields=problems)

    # Starlette's own errors (a body that is not JSON, an unknown path, a wrong method) in the
    # same shape as ours, not `{"detail": ...}`.
    http_codes = {400: "invalid_request", 401: "unauthorized", 403: "forbidden",
                  404: "not_found", 405: "method_not_allowed"}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, http_codes.get(exc.status_code, "http_error"),
                          str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def database_failure(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DBAPIError | PoolTimeout)
        return metering_response(api_error(exc))

    app.add_exception_handler(DBAPIError, database_failure)
    app.add_exception_handler(PoolTimeout, database_failure)


def create_app(settings: Settings | None = None, database_url: str | None = None,
               migrate_on_start: bool = True) -> FastAPI:
    settings = settings or get_settings()
    configure_clock(settings)
    wire_billing()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db_async.open_pool(app.state, app.state.engine, size=10)
        refresher = asyncio.create_task(
            plan_service.keep_versions_fresh(app.state.read_sessions))
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await db_async.close_pool(app.state)
            for helpers in (app.state.long_reads, app.state.ingest_helpers):
                if helpers is not None:
                    helpers.close()
            app.state.engine.dispose()
            app.state.read_engine.dispose()

    app = FastAPI(
        title="Sandbox metering and billing",
        version="0.1.0",
        description="Exact per-second metering, limits and invoicing for sandbox runtimes.",
        lifespan=lifespan,
    )
    url = database_url or resolve_database_url(settings)
    engine = make_engine(url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    # Reads have connections of their own, each statement bounded: they cannot take the
    # orchestrator's (see metering.api.bulkhead).
    app.state.read_engine = make_engine(url, pool_size=settings.read_pool_size,
                                        statement_timeout_ms=settings.read_statement_timeout_ms,
                                        pool_timeout_s=settings.read_pool_timeout_s,
                                        # A read can afford a round trip to find a connection
                                        # the database dropped, instead of answering 503 once.
                                        pre_ping=True)
    app.state.read_sessions = make_sessionmaker(app.state.read_engine)
    # Long series are built in helper processes (metering.api.long_reads): started with the
    # API process by `metering serve` (`app_from_environment`), else on first use.
    app.state.long_reads = (LongReads(settings, url, setup=wire_billing)
                            if settings.long_read_helpers else None)
    # Event batches too, when `ingest_helpers` is set (metering.ingest.endpoints).
    app.state.ingest_helpers = (IngestHelpers(settings, url, setup=wire_billing)
                                if settings.ingest_helpers else None)
    if migrate_on_start:
        migrate.upgrade(engine)
    if settings.bootstrap_admin_key:
        with transaction(app.state.sessions) as session:
            ensure_key(session, settings.bootstrap_admin_key, "admin")
    install_error_handlers(app)
    app.add_middleware(throttle.Throttle, settings=settings)
    app.add_middleware(connections.BodyTimeout, timeout_s=settings.body_timeout_s)
    observability.install(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={
        503: error_response("`not_ready`: the database is unreachable or not migrated, or "
                            "the helper processes are starting")})
    def readyz() -> JSONResponse:
        """The database answers, its schema is at the newest migration, and this process's
        helper processes have started."""
        for helpers in (app.state.long_reads, app.state.ingest_helpers):
            if helpers is not None and not helpers.started():
                return _error(503, "not_ready", f"{helpers.kind} helpers starting")
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            current = migrate.current_revision(engine)
        except (OperationalError, PoolTimeout, DBAPIError):
            return _error(503, "not_ready", "database unreachable")
        head = migrate.head_revision(engine)
        if current != head:
            return _error(503, "not_ready", f"schema at {current}, expected {head}")
        return JSONResponse({"status": "ready", "schema": current})

    for router in (ingest_endpoints.router, admission_endpoints.router, usage_endpoints.router,
                   accounts_endpoints.router, plan_endpoints.router, keys_endpoints.router,
                   enforcement_endpoints.router, invoice_endpoints.router, charges_endpoints.router,
                   stripe_router,
                   dashboard_endpoints.router):
        responses = ERROR_RESPONSES
        if router is ingest_endpoints.router:
            responses = {**ERROR_RESPONSES, 413: error_response(
                "`payload_too_large`: the body or the batch is over the limit")}
        app.include_router(router, responses=responses)
    return app


def wire_billing() -> None:
    """Plug billing into metering: prices, limits and standing from plans and credits, and
    the default plan (with its credit) for teams first seen in events or admissions."""
    plugins.install(plan_service.BILLING)


SWITCH_INTERVAL_S = 0.0005  # float-ok: the API processes' interpreter switch interval


def app_from_environment() -> FastAPI:
    """The app of one API process started by `metering serve` (already migrated)."""
    import os

    observability.configure_json_logging(get_settings().log_level)
    connections.raise_file_limit()
    url = os.environ.get("METERING_RESOLVED_DATABASE_URL")
    app = create_app(get_settings(), database_url=url, migrate_on_start=url is None)
    for helpers in (app.state.long_reads, app.state.ingest_helpers):
        if helpers is not None:
            helpers.start()
    # Everything built so far (routes, models, templates) lives as long as the process: keep
    # it out of the collector's full passes, which would otherwise walk it on every one.
    gc.collect()
    gc.freeze()
    # The event loop (admissions, the kill-order feed) shares the interpreter lock with the
    # threads that validate and store event batches; a thread holding it gives it up only
    # every switch interval, and an admission waits for it at each step. Ten times as often
    # as Python's default: admissions took 8.7 ms instead of 10.8 on average, timed by the
    # service at 20,000 events/s, minute by minute alternately (docs/scaling.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return app
