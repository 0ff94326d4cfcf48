"""A small asyncio connection pool for the one hot path that runs on the event loop.

Admissions are on the orchestrator's start path: answering them on the event loop, without a
hop to a worker thread and without the ORM, saves most of the per-request CPU and the thread
handoffs that make up a latency tail. Everything else stays on SQLAlchemy.

One pool per event loop (a test may run several loops on one app), opened by the app's
lifespan and closed with it; a loop without one (no lifespan) simply takes the threaded path.
The fast path is an optimisation, never the only way: on any database error it steps aside
(`FastPathUnavailable`) and the threaded path answers, with its established error mapping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import Engine

from metering.db import BEGIN, COMMIT, NO_FLUSH_WAIT, prepare_in_pipeline

log = logging.getLogger(__name__)

# Waiting longer than this for a pooled connection means trouble: let the threaded path
# (which connects on demand and answers 503 when the database is down) take the request.
_GET_TIMEOUT_S = 1.0  # float-ok: seconds


class FastPathUnavailable(Exception):
    """The event-loop path could not reach the database; use the threaded path."""


def _conninfo(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _pools(state: Any) -> dict[int, AsyncConnectionPool]:
    pools: dict[int, AsyncConnectionPool] | None = getattr(state, "loop_pools", None)
    if pools is None:
        pools = {}
        state.loop_pools = pools
    return pools


async def open_pool(state: Any, engine: Engine, size: int) -> None:
    """Open this loop's pool (in the background: a database that is down does not hold up
    start-up; requests then take the threaded path until it is back)."""
    pool = AsyncConnectionPool(
        _conninfo(engine), min_size=1, max_size=size, open=False, timeout=_GET_TIMEOUT_S,
        # Autocommit: psycopg sends no BEGIN of its own (a round trip before the first
        # statement); `begin` queues it with the first pipeline instead.
        kwargs={"options": "-c timezone=UTC", "connect_timeout": 3, "autocommit": True},
        name="admissions")
    await pool.open(wait=False)
    _pools(state)[id(asyncio.get_running_loop())] = pool


async def close_pool(state: Any) -> None:
    pool = _pools(state).pop(id(asyncio.get_running_loop()), None)
    if pool is not None:
        await pool.close()


def pool_for_loop(state: Any) -> AsyncConnectionPool | None:
    return _pools(state).get(id(asyncio.get_running_loop()))


@asynccontextmanager
async def pipelined(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """`metering.db.pipelined` for the event loop's connection: the first failure raised,
    psycopg's "pipeline aborted" warning for the statements it skipped never logged."""
    failed: psycopg.Error | None = None
    try:
        async with conn.pipeline():
            try:
                yield
            except psycopg.Error as exc:
                failed = exc
    except psycopg.Error:
        if failed is None:
            raise
    if failed is not None:
        raise failed


async def commit_with(conn: psycopg.AsyncConnection[Any], statement: str,
                      params: Mapping[str, Any], *, durable: bool = True) -> None:
    """`metering.db.commit_with` on the event loop's connection: the last statement and the
    COMMIT of the unit of work `connection` opened, in one round trip."""
    async with pipelined(conn):
        if not durable:
            await conn.execute(NO_FLUSH_WAIT, prepare=False)
        await conn.execute(statement, params, prepare=prepare_in_pipeline(statement))
        await conn.execute(COMMIT, prepare=False)


async def begin(conn: psycopg.AsyncConnection[Any]) -> None:
    """Open the unit of work: its BEGIN queued as the first statement of the pipeline the
    caller is in (the pool's connections are in autocommit mode; see
    `metering.db.begin_with_first_statement`)."""
    await conn.execute(BEGIN, prepare=False)


@asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection for one unit of work (the body opens it with `begin`), rolled
    back unless the body committed.
    Database errors (and a pool that cannot hand out a connection in time) come out as
    `FastPathUnavailable`; other exceptions pass through."""
    try:
        async with pool.connection() as conn:
            try:
                yield conn
            finally:
                if not conn.closed and not conn.broken:
                    await conn.rollback()
    except (psycopg.Error, PoolTimeout) as exc:
        log.warning("admission fast path unavailable: %s: %s", type(exc).__name__, exc)
        raise FastPathUnavailable(str(exc)) from exc
