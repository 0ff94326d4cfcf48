"""What a feature hands the worker: its periodic jobs, each with its interval.

Every feature that has background work declares it in its own `jobs.py` as a `schedule()`
function answering `JobEntry` rows; the worker only collects them. Every job must be safe
with any number of workers running it at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class JobEntry(NamedTuple):
    name: str
    interval_s: float
    run: Callable[[], object]
