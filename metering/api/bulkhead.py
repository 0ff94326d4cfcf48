"""Bulkheads: the orchestrator's path keeps capacity of its own that reads cannot take.

Requests fall in three classes by path (`route_class`):
- `orchestrator`: `POST /v1/events`, `POST /v1/admissions`, the kill-order feed. Its own
  connection pool (`app.state.sessions`, plus the admissions event-loop pool) and its own worker
  threads (`run_sync`, a limiter of `orchestrator_threads`); event batches are stored by the
  API process's ingest helper processes when it has them (`metering.api.helpers`); it is
  never refused for load;
- `health`: `/healthz`, `/readyz`, `/metrics`: answered on the event loop or from their own
  connections, never queued behind anything;
- `read`: everything else (dashboard, usage, finance). Its own connection pool
  (`app.state.read_sessions`, with a statement timeout) and at most `read_concurrency` requests
  in flight per process: past that it answers `503 overloaded` at once, with `Retry-After`,
  instead of queueing for a connection. Sync endpoints run on AnyIO's default thread limiter,
  which `install` sizes above `read_concurrency`, so reads never hold every thread. Reads with
  a long answer (`long_read`) also take one of `long_read_concurrency` places (1): several of
  them working at once in threads make the event loop wait its turn for the interpreter lock
  behind each of them, and the admissions it serves with it (measured in `bench.abuse`:
  admission p99 82 to 88 ms with four at once per process, 28 to 37 ms with one). The read
  itself is built in a helper process at a lower CPU priority (`metering.api.long_reads`).

Per-key rate and concurrency limits (`metering.api.throttle`) come before the class check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

RouteClass = Literal["orchestrator", "health", "read"]
ORCHESTRATOR_PATHS = frozenset({"/v1/events", "/v1/admissions"})
ORCHESTRATOR_PREFIXES = ("/v1/enforcement/",)
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

T = TypeVar("T")


def route_class(path: str) -> RouteClass:
    if path in ORCHESTRATOR_PATHS or path.startswith(ORCHESTRATOR_PREFIXES):
        return "orchestrator"
    if path in HEALTH_PATHS:
        return "health"
    return "read"


@dataclass
class Capacity:
    """One process's capacity per class. Built lazily on the running loop (AnyIO limiters
    belong to an event loop)."""

    orchestrator_threads: int
    read_concurrency: int
    long_read_concurrency: int = 1
    reads_in_flight: int = 0
    _limiters: dict[int, anyio.CapacityLimiter] = field(default_factory=dict)
    _long_reads: dict[int, anyio.CapacityLimiter] = field(default_factory=dict)

    def orchestrator_limiter(self) -> anyio.CapacityLimiter:
        limiter, made = _on_running_loop(self._limiters, self.orchestrator_threads)
        if made:
            # Sync endpoints (reads) share AnyIO's default limiter: room for every admitted
            # read and the sync handlers of the orchestrator's feed besides.
            default = anyio.to_thread.current_default_thread_limiter()
            default.total_tokens = max(default.total_tokens, self.read_concurrency + 16)
        return limiter

    def long_read_limiter(self) -> anyio.CapacityLimiter:
        return _on_running_loop(self._long_reads, self.long_read_concurrency)[0]

    def try_enter_read(self) -> bool:
        if self.reads_in_flight >= self.read_concurrency:
            return False
        self.reads_in_flight += 1
        return True

    def leave_read(self) -> None:
        self.reads_in_flight -= 1


def _on_running_loop(
    limiters: dict[int, anyio.CapacityLimiter], tokens: int,
) -> tuple[anyio.CapacityLimiter, bool]:
    """The running loop's limiter of `limiters` (made with `tokens` on first use), and
    whether it was made now."""
    import asyncio

    loop = id(asyncio.get_running_loop())
    limiter = limiters.get(loop)
    if limiter is not None:
        return limiter, False
    limiter = limiters[loop] = anyio.CapacityLimiter(tokens)
    return limiter, True


def capacity(state: Any) -> Capacity:
    found: Capacity | None = getattr(state, "capacity", None)
    if found is None:
        settings = state.settings
        found = Capacity(settings.orchestrator_threads, settings.read_concurrency,
                         settings.long_read_concurrency)
        state.capacity = found
    return found


async def run_sync(request: Request, work: Callable[..., T], *args: Any) -> T:
    """Run the orchestrator path's unit of work on its own worker threads."""
    limiter = capacity(request.app.state).orchestrator_limiter()
    return await anyio.to_thread.run_sync(partial(work, *args), limiter=limiter)


def long_read(request: Request) -> anyio.CapacityLimiter:
    """The place a read with a long answer waits for (`async with`) before its worker-thread
    hop: the process runs `long_read_concurrency` of them at once."""
    return capacity(request.app.state).long_read_limiter()


def sessions_for(request: Request) -> sessionmaker[Session]:
    """The connection pool of the request's class (reads have their own)."""
    state = request.app.state
    if route_class(request.url.path) == "orchestrator":
        factory: sessionmaker[Session] = state.sessions
        return factory
    reads: sessionmaker[Session] = getattr(state, "read_sessions", None) or state.sessions
    return reads
