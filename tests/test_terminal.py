"""The service as a person starts it from a terminal: `make run` on the embedded PostgreSQL.

Real processes in their own session: the banner and then quiet, the embedded server stopped
with the service on Ctrl-C (SIGINT to the terminal's process group) and on SIGTERM, and the
`metering db` commands telling the truth about it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from metering import embedded

ROOT = Path(__file__).resolve().parents[1]
METERING = str(ROOT / ".venv" / "bin" / "metering")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("METERING_") and k != "DATABASE_URL"}
    env["METERING_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def wait_ready(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited during start-up"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the service did not become ready")


def gone(pid: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not embedded._alive(pid):
            return True
        time.sleep(0.1)
    return False


def metering(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METERING, *args], env=environment(data_dir), capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One embedded server's data for the module (initdb is the slow part). Outside pytest's
    base directory: every pytest start resets that to 0700, which the server's own system
    user (when the tests run as root) could then no longer enter."""
    base = Path(tempfile.mkdtemp(prefix="metering-test-"))
    base.chmod(0o755)
    path = base / "data"
    yield path
    embedded.stop(path)
    shutil.rmtree(base, ignore_errors=True)


def test_make_run_prints_a_short_banner_then_stays_quiet_and_ctrl_c_stops_the_database(
    data_dir: Path,
) -> None:
    port = free_port()
    # Every job runs ten times as often as by default, so these seconds hold more job runs
    # than the first minute of a plain `make run` does.
    env = environment(data_dir, METERING_SWEEP_INTERVAL_S="0.1", METERING_FOLD_INTERVAL_S="0.5",
                      METERING_CLOSE_INTERVAL_S="1", METERING_STRIPE_SYNC_INTERVAL_S="1")
    process = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        wait_ready(port, process)
        postmaster = embedded.status(data_dir).pid
        assert postmaster is not None
        time.sleep(6)
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        output, _ = process.communicate(timeout=60)
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) <= 15, output
    assert f"http://localhost:{port}/dashboard" in output
    assert str(data_dir.resolve()) in output
    assert "Ctrl-C" in output
    assert "Traceback" not in output and "Running job" not in output, output
    assert gone(postmaster), "the embedded PostgreSQL outlived the service"
    assert not embedded.status(data_dir).running


def test_sigterm_stops_the_service_and_its_database_and_db_commands_say_so(
    data_dir: Path,
) -> None:
    port = free_port()
    process = subprocess.Popen([METERING, "serve", "--port", str(port)], cwd=ROOT,
                               env=environment(data_dir), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_ready(port, process)
        status = metering(data_dir, "db", "status")
        assert status.returncode == 0 and status.stderr == ""
        assert status.stdout.startswith("running, pid ")
        assert f"in use by pid {process.pid}: metering serve" in status.stdout
        # Stopping it under the service is refused, with the reason.
        refused = metering(data_dir, "db", "stop")
        assert refused.returncode == 1
        assert "in use by" in refused.stderr and "--force" in refused.stderr
        postmaster = embedded.status(data_dir).pid
        assert postmaster is not None
        # A CLI command while the service runs uses the same server and leaves it running.
        created = metering(data_dir, "keys", "create", "--role", "admin")
        assert created.returncode == 0, created.stderr
        assert created.stderr == "", created.stderr
        assert embedded.status(data_dir).pid == postmaster
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert "Traceback" not in output, output
    assert gone(postmaster), "the embedded PostgreSQL outlived the service"
    assert metering(data_dir, "db", "status").stdout.startswith("stopped (data in ")
    # A command on its own starts the server for itself and stops it again.
    listed = metering(data_dir, "keys", "list")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    assert "admin" in listed.stdout
    assert not embedded.status(data_dir).running
    assert metering(data_dir, "db", "stop").stdout == "not running\n"


def test_a_job_without_its_database_says_so_once_not_a_traceback_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sqlalchemy.exc import OperationalError

    from billing.worker import _guarded

    down = True

    def job() -> None:
        if down:
            raise OperationalError("SELECT 1", {}, Exception("connection refused\nmore"))

    run = _guarded("enforce_limits", job)
    with caplog.at_level("INFO", logger="billing.worker"):
        for _ in range(5):
            run()
        down = False
        run()
        run()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [("WARNING", "job cannot reach the database; retrying"),
                        ("INFO", "job running again: the database answers")]
    assert not any(r.exc_info for r in caplog.records)
