"""Reads with a long answer run in helper processes at a lower CPU priority.

A year of hours is 8,760 points and a megabyte of JSON. Built in a worker thread of an API
process, it holds that process's interpreter lock, and the event loop that serves admissions
waits its turn for it behind the read (`bench.abuse`: admission p99 51 to 79 ms with one long
read at a time in a thread, against 7 to 12 ms without abuse). In a helper process
(`metering.api.helpers`) the read holds only its own interpreter, and at `long_read_nice` the
kernel gives the API processes the CPU first: the read gets the time they leave.

Each API process has `long_read_concurrency` of these helpers (one per long-read place), with
a pool of one connection under the read pool's statement timeout. The key check and the team
check stay in the API process, before the read is queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from metering.api import helpers
from metering.api.errors import api_error
from metering.config import Settings
from metering.db import transaction

T = TypeVar("T")


def _run(work: Callable[..., T], *args: Any) -> T:
    """In a helper: `work(session, settings, *args)` in one transaction. Database errors come
    back as the API's own errors (which cross the process boundary whole)."""
    settings, sessions = helpers.state()
    try:
        with transaction(sessions) as session:
            return work(session, settings, *args)
    except (DBAPIError, PoolTimeout) as exc:
        raise api_error(exc) from None


class LongReads(helpers.Helpers):
    """One API process's long-read helpers."""

    def __init__(self, settings: Settings, database_url: str,
                 setup: Callable[[], None] | None = None) -> None:
        super().__init__(
            "long-read", settings, database_url, workers=settings.long_read_concurrency,
            nice=settings.long_read_nice, setup=setup,
            pool=helpers.Pool(settings.read_statement_timeout_ms, settings.read_pool_timeout_s))

    async def read(self, work: Callable[..., T], *args: Any) -> T:
        """`work(session, settings, *args)` in a helper, in one transaction."""
        return await self.call(_run, work, *args)
