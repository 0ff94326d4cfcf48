"""Helper processes of an API process: work that would hold its interpreter lock runs there.

An API process's event loop serves admissions and the kill-order feed. Anything its worker
threads do in Python (validating a batch of events, building a year of hours) holds the
interpreter lock the loop needs, and an admission waits its turn for it at every step. A
helper process holds only its own lock; at a higher nice value the kernel also gives the API
processes the CPU first.

`Helpers` is one kind of helper (long reads, event batches) of one API process: `workers`
processes spawned with it (`start`) or on first use, stopped with the app (`close`). Each has
its own connection pool of one, its own clock from the settings, and the plug-ins `setup`
installs. A helper that dies is replaced and the call made once more. A helper exits within a
second of its API process, however that ended.

Database failures cross back as the API's own errors (`metering.api.errors.api_error`): what
a request in the API process would have answered, without shipping the driver's exception (and
the statement's parameters) across the process boundary.
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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from metering.config import Settings, configure_clock
from metering.db import make_engine, make_sessionmaker
from metering.errors import Overloaded
from metering.observability import configure_json_logging

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Pool:
    """A helper's one-connection pool: its statement timeout (None: none), how long a call
    waits for the connection, and whether a checkout first checks the connection with a
    round trip of its own (`pre_ping`; not needed where every unit of work runs again on a
    new connection when it lost its own, `metering.db.run_transaction`)."""

    statement_timeout_ms: int | None
    timeout_s: float  # float-ok: seconds
    pre_ping: bool = True


class _State:
    """In a helper process: its settings and its pool (set by `_start`)."""

    settings: Settings | None = None
    sessions: sessionmaker[Session] | None = None


def state() -> tuple[Settings, sessionmaker[Session]]:
    """In a helper: the settings it was started with and its connection pool."""
    settings, sessions = _State.settings, _State.sessions
    assert settings is not None and sessions is not None, "helper not started"
    return settings, sessions


def _exit_with(parent: int) -> None:
    """Exit within a second of the API process that started this helper, however it ended
    (a helper waits on a queue it also holds the writing end of: it would never see EOF)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _lower_priority(kind: str, nice: int) -> None:
    """Run at `nice`, and in a scheduling group of its own at that nice.

    Where the kernel groups processes by session for scheduling (autogroup, on by default in
    most distributions), a process's nice value only ranks it within its session: the API
    processes and their helpers would share one group's CPU, weighed as one against every
    PostgreSQL backend (each its own session). A helper therefore starts a session of its own
    and gives that group its nice, so that the kernel ranks it below the API processes and
    the database alike."""
    try:
        niceness = os.nice(nice)
    except OSError:  # not allowed here: run at the API process's priority
        log.warning("%s helper could not lower its CPU priority", kind)
        return
    try:
        os.setsid()
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(niceness))
    except OSError:  # no autogroup here (disabled, another kernel): the nice value suffices
        pass


def _start(kind: str, settings: Settings, database_url: str, nice: int, pool: Pool,
           setup: Callable[[], None] | None) -> None:
    """A helper's start: lower its priority, then its clock, plug-ins and pool."""
    # Ctrl-C in a terminal reaches the whole process group: the API process stops its
    # helpers itself (and a helper outliving it exits by itself).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with(os.getppid())
    if nice:
        _lower_priority(kind, nice)
    configure_json_logging(settings.log_level)
    configure_clock(settings)
    if setup is not None:
        setup()
    _State.settings = settings
    _State.sessions = make_sessionmaker(helper_engine(database_url, pool))


def helper_engine(database_url: str, pool: Pool) -> Engine:
    """A helper's engine: its one connection, as `pool` says."""
    return make_engine(database_url, pool_size=1, statement_timeout_ms=pool.statement_timeout_ms,
                       pool_timeout_s=pool.timeout_s, pre_ping=pool.pre_ping)


def _ready() -> None:
    """Nothing: submitted to start a helper ahead of its first call."""


class Helpers:
    """One kind of helper process of one API process (started by `start`, or on first use)."""

    def __init__(self, kind: str, settings: Settings, database_url: str, *, workers: int,
                 nice: int, pool: Pool, setup: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._settings = settings
        self._url = database_url
        self._workers = workers
        self._nice = nice
        self._pool_spec = pool
        self._setup = setup
        self._pool: ProcessPoolExecutor | None = None
        self._starting: list[Future[None]] = []

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Spawned, not forked: the API process has threads (and a running loop).
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(self.kind, self._settings, self._url, self._nice, self._pool_spec,
                          self._setup))
        return self._pool

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a helper; a helper that died is replaced and the call made once
        more (so `fn` must be safe to repeat)."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return await loop.run_in_executor(pool, fn, *args)
            except BrokenProcessPool:
                log.warning("a %s helper stopped; starting another (attempt %d)",
                            self.kind, attempt)
                if self._pool is pool:
                    self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
        raise Overloaded(f"the {self.kind} helpers keep stopping; retry later")

    def pids(self) -> list[int]:
        """The helpers' process ids (none before they start or after `close`)."""
        return [] if self._pool is None else sorted(self._pool._processes or {})

    def start(self) -> None:
        """Start the helpers now rather than on the first call (which would wait about a
        second for a helper's imports)."""
        pool = self._executor()
        self._starting = [pool.submit(_ready) for _ in range(self._workers)]

    def started(self) -> bool:
        """Whether every helper `start` began is past its imports and set-up (until then a
        batch would wait for one, and Ctrl-C would interrupt its imports). A helper that
        died starting counts as past them: its error is logged, and the next call starts
        another."""
        return all(f.done() for f in self._starting)

    def close(self) -> None:
        """Stop the helpers: calls under way finish, the queued ones are cancelled, and the
        helpers' queues are released before the process exits."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
