"""Reads with a long answer run in helper processes at a lower CPU priority.

A year of hours is 8,760 points and a megabyte of JSON. Built in a worker thread of an API
process, it holds that process's interpreter lock, and the event loop that serves admissions
waits its turn for it behind the read (`bench.abuse`: admission p99 51 to 79 ms with one long
read at a time in a thread, against 7 to 12 ms without abuse). In a helper process the read
holds only its own interpreter, and at `long_read_nice` the kernel gives the API processes
the CPU first: the read gets the time they leave.

Each API process has `long_read_concurrency` helpers (one per long-read place), started with
it by `metering serve` (`start`) or else on its first long read, and stops them with the app.
A helper has its own connection pool of one (the read pool's statement timeout), its own
clock from the settings, and the plug-ins `setup` installs (prices from plans). A helper that
dies is replaced and the read retried once; the key check and the team check stay in the API
process, before the read is queued. A helper exits within a second of its API process,
however that ended.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings, configure_clock
from metering.db import make_engine, make_sessionmaker, transaction
from metering.errors import (
    AT_CAPACITY,
    CANCELLED_READ,
    QUERY_CANCELED,
    STORAGE_DOWN,
    Overloaded,
    StorageUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Helper:
    """In a helper process: its settings and its one-connection pool (set by `_start`)."""

    settings: Settings | None = None
    sessions: sessionmaker[Session] | None = None


def _exit_with(parent: int) -> None:
    """Exit within a second of the API process that started this helper, however it ended
    (a helper waits on a queue it also holds the writing end of: it would never see EOF)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start(settings: Settings, database_url: str, nice: int,
           setup: Callable[[], None] | None) -> None:
    """A helper's start: lower its priority, then its clock, plug-ins and pool."""
    # Ctrl-C in a terminal reaches the whole process group: the API process stops its
    # helpers itself (and a helper outliving it exits by itself).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with(os.getppid())
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: run at the API process's priority
            log.warning("long-read helper could not lower its CPU priority")
    configure_clock(settings)
    if setup is not None:
        setup()
    _Helper.settings = settings
    _Helper.sessions = make_sessionmaker(make_engine(
        database_url, pool_size=1, statement_timeout_ms=settings.read_statement_timeout_ms,
        pool_timeout_s=settings.read_pool_timeout_s, pre_ping=True))


def _run(work: Callable[..., T], *args: Any) -> T:
    """In a helper: `work(session, settings, *args)` in one transaction. Database errors come
    back as the API's own errors (which cross the process boundary whole)."""
    settings, sessions = _Helper.settings, _Helper.sessions
    assert settings is not None and sessions is not None, "helper not started"
    try:
        with transaction(sessions) as session:
            return work(session, settings, *args)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == QUERY_CANCELED:
            raise Overloaded(CANCELLED_READ) from None
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise StorageUnavailable(STORAGE_DOWN) from None
        raise RuntimeError(f"long read failed: {type(exc).__name__}") from None
    except PoolTimeout:
        raise Overloaded(AT_CAPACITY) from None


def _ready() -> None:
    """Nothing: submitted to start a helper ahead of its first read."""


class LongReads:
    """One API process's helpers (started by `start`, or on first use)."""

    def __init__(self, settings: Settings, database_url: str,
                 setup: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._url = database_url
        self._setup = setup
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Spawned, not forked: the API process has threads (and a running loop).
            self._pool = ProcessPoolExecutor(
                max_workers=self._settings.long_read_concurrency,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(self._settings, self._url, self._settings.long_read_nice,
                          self._setup))
        return self._pool

    async def call(self, work: Callable[..., T], *args: Any) -> T:
        """`work(session, settings, *args)` in a helper; a helper that died is replaced and
        the call made once more."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return await loop.run_in_executor(pool, _run, work, *args)
            except BrokenProcessPool:
                log.warning("a long-read helper stopped; starting another (attempt %d)", attempt)
                if self._pool is pool:
                    self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
        raise Overloaded("the long-read helpers keep stopping; retry later")

    def start(self) -> None:
        """Start the helpers now rather than on the first long read (which would wait about
        a second for a helper's imports)."""
        pool = self._executor()
        for _ in range(self._settings.long_read_concurrency):
            pool.submit(_ready)

    def close(self) -> None:
        """Stop the helpers: a read under way finishes (within the statement timeout), the
        queued ones are cancelled, and the helpers' queues are released before the process
        exits."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
