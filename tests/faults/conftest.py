"""Fault-injection plumbing: the real service as a subprocess on a fresh database, which a
test can SIGKILL and restart, and a fleet of events whose exact usage is known in advance;
`metering worker` processes, the Stripe double as its own process, and the orchestrator's
webhook receiver, for the tests of workers killed and run side by side.

These tests are marked `faults` (`pytest -m "not faults"` leaves them out). Each prints its
figures; run with `-s` to see them.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from metering.core.clock import SIM_CLOCK_ENV, SimClock
from metering.enforcement.signing import (
    MESSAGE_ID_HEADER,
    SIGNATURE_HEADER,
    verify_signature,
)
from metering.errors import InvalidSignature
from tests.conftest import INGEST_HELPERS_ENV, INGEST_HELPERS_SET_HERE, SERVER_URL

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: kills processes and cuts connections (slow)")


def service_environment() -> dict[str, str]:
    """This environment for a real service process, with the service's default ingest
    helpers (the tests' in-process apps turn them off, see tests/conftest.py)."""
    env = dict(os.environ)
    if INGEST_HELPERS_SET_HERE:
        env.pop(INGEST_HELPERS_ENV, None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fault_database(worker_id: str) -> Iterator[str]:
    """A fresh, empty database on the tests' server; the service migrates it."""
    name = f"metering_fault_{worker_id}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(SERVER_URL)._replace(path=f"/{name}"))
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ProcessGroup:
    """A process started in its own session, so that signals reach every process of it."""

    process: subprocess.Popen[bytes] | None

    def kill(self) -> None:
        """SIGKILL, no warning: in-flight requests and open transactions die with it."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


class Service(ProcessGroup):
    """`metering serve` in its own process group, so SIGKILL takes every process of it."""

    def __init__(self, database_url: str, workers: int = 1, scheduler: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "mk_admin_" + secrets.token_urlsafe(24)
        self.workers = workers
        self.env = {**service_environment(), "DATABASE_URL": database_url,
                    "METERING_BOOTSTRAP_ADMIN_KEY": self.admin_key,
                    "METERING_RUN_SCHEDULER": "true" if scheduler else "false",
                    "METERING_FOLD_INTERVAL_S": "1", "METERING_LOG_LEVEL": "ERROR",
                    **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []  # seconds from launch to ready, per start

    def start(self, timeout: float = 45) -> None:
        launched = time.monotonic()
        self.process = subprocess.Popen(
            [str(ROOT / ".venv/bin/metering"), "serve", "--port", str(self.port),
             "--workers", str(self.workers)],
            env=self.env, cwd=ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL)
        while time.monotonic() - launched < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    self.starts.append(time.monotonic() - launched)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the service did not become ready")

    def create_key(self, role: str) -> str:
        response = httpx.post(self.url + "/v1/keys", json={"role": role},
                              headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=10)
        response.raise_for_status()
        return str(response.json()["key"])


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Services a test starts; all stopped at the end, whatever happened."""
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Fleet:
    """Sandboxes with known lives: created at t0, one sample a second, some resized half
    way, killed after `lifetime` seconds. The events come out second by second, as an
    orchestrator sends them, so lifecycle events and samples interleave."""

    sandboxes: int
    base_lifetime: int
    teams: int = 10
    spread: int = 200
    t0: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0)
                         - timedelta(minutes=15))

    def lifetime(self, i: int) -> int:
        return self.base_lifetime + i % self.spread

    def vcpu(self, i: int) -> int:
        return 1 + i % 4

    def memory_mib(self, i: int) -> int:
        return 256 * (1 + i % 8)

    def resized(self, i: int) -> bool:
        return i % 5 == 0

    def team(self, i: int) -> str:
        return f"team_f{i % self.teams}"

    def _event(self, i: int, kind: str, second: int, ms: int = 0, **data: Any) -> dict[str, Any]:
        moment = self.t0 + timedelta(seconds=second, milliseconds=ms)
        kind_type = "sandbox.host_stats" if kind == "host_stats" else f"sandbox.lifecycle.{kind}"
        return {"specversion": "1.0", "id": f"{kind}-{i}-{second}",
                "source": f"orchestrator/faults/node-{i % 7}", "type": kind_type,
                "subject": f"sbx_{i:05d}", "time": iso(moment),
                "data": {"team_id": self.team(i), "execution_id": f"exe_{i:05d}", **data}}

    def events(self) -> Iterator[dict[str, Any]]:
        longest = max(self.lifetime(i) for i in range(self.sandboxes))
        for second in range(longest + 1):
            for i in range(self.sandboxes):
                life = self.lifetime(i)
                if second == 0:
                    yield self._event(i, "created", 0, vcpu=self.vcpu(i),
                                      memory_mib=self.memory_mib(i))
                if self.resized(i) and second == life // 2:
                    yield self._event(i, "updated", second, vcpu=self.vcpu(i) + 1,
                                      memory_mib=self.memory_mib(i))
                if second < life:
                    yield self._event(i, "host_stats", second, ms=1 + i % 997,
                                      cpu_pct=round(i % 100 + 0.5, 1),
                                      memory_used_mib=100 + second % 50)
                elif second == life:
                    yield self._event(i, "killed", second, reason="request")

    @property
    def lifecycle_count(self) -> int:
        return self.sandboxes * 2 + sum(1 for i in range(self.sandboxes) if self.resized(i))

    @property
    def sample_count(self) -> int:
        return sum(self.lifetime(i) for i in range(self.sandboxes))

    def expected_usage(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Per team: exact (vcpu_seconds, gib_seconds)."""
        vcpu_ms: dict[str, int] = {}
        mib_ms: dict[str, int] = {}
        for i in range(self.sandboxes):
            life, team = self.lifetime(i), self.team(i)
            if self.resized(i):
                half = life // 2
                v = self.vcpu(i) * half * 1000 + (self.vcpu(i) + 1) * (life - half) * 1000
            else:
                v = self.vcpu(i) * life * 1000
            vcpu_ms[team] = vcpu_ms.get(team, 0) + v
            mib_ms[team] = mib_ms.get(team, 0) + self.memory_mib(i) * life * 1000
        return {team: (Decimal(vcpu_ms[team]) / 1000, Decimal(mib_ms[team]) / 1024 / 1000)
                for team in vcpu_ms}


def stored_counts(database_url: str) -> tuple[int, int, int]:
    """(lifecycle events, samples pending or folded, executions ended) in the database."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM lifecycle_events),"
            " (SELECT count(*) FROM host_stats_pending)"
            "   + (SELECT coalesce(sum(samples), 0) FROM sample_minutes),"
            " (SELECT count(*) FROM executions WHERE end_at IS NOT NULL)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def read_usage(service: Service, key: str, fleet: Fleet) -> dict[str, tuple[Decimal, Decimal]]:
    usage = {}
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as http:
        for team in fleet.expected_usage():
            response = http.get(f"/v1/teams/{team}/usage", params={
                "start": iso(fleet.t0 - timedelta(hours=1)),
                "end": iso(fleet.t0 + timedelta(hours=1)), "granularity": "day"})
            response.raise_for_status()
            totals = response.json()["totals"]
            usage[team] = (Decimal(totals["vcpu_seconds"]), Decimal(totals["gib_seconds"]))
    return usage


# --------------------------------------------------------------------------- more processes


def sim_clock_env(clock: SimClock) -> dict[str, str]:
    """The environment that puts a process on `clock` (see `metering.core.clock`)."""
    return {SIM_CLOCK_ENV: clock.setting()}


class Worker(ProcessGroup):
    """`metering worker` in its own process group (SIGKILL takes all of it); its output goes
    to `log`. Jobs run on the intervals of the settings in `env` (real seconds)."""

    def __init__(self, database_url: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.env = {**service_environment(), "DATABASE_URL": database_url,
                    "METERING_LOG_LEVEL": "ERROR", "METERING_FOLD_INTERVAL_S": "1",
                    **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 45) -> Worker:
        launched = time.monotonic()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(ROOT / ".venv/bin/metering"), "worker"], env=self.env, cwd=ROOT,
                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        while time.monotonic() - launched < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}: "
                                   f"{self.output()[-2000:]}")
            if "worker running" in self.output():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"the worker did not start: {self.output()[-2000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def job_failures(self) -> int:
        """Jobs that raised (each is logged once as "job failed")."""
        return self.output().count('"job failed"')

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None



class StripeDoubleProcess:
    """The Stripe test double (`tests.stripe_double.server`) as its own process, as Stripe is:
    its API at `url`, its state and request log through the control endpoints."""

    api_key = "sk_test_stripedouble"

    def __init__(self, log: Path, seed: int = 1) -> None:
        self.log = log  # its output: a client SIGKILLed mid-request shows there as a reset
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seed = seed
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> StripeDoubleProcess:
        launched = time.monotonic()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(ROOT / ".venv/bin/python"), "-m", "tests.stripe_double.server",
                 "--port", str(self.port), "--seed", str(self.seed), "--api-key", self.api_key],
                cwd=ROOT, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        while time.monotonic() - launched < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Stripe double exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/_double/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the Stripe double did not start")

    def env(self) -> dict[str, str]:
        """Settings that point the service at this double."""
        return {"METERING_STRIPE_API_KEY": self.api_key, "METERING_STRIPE_API_BASE": self.url}

    def state(self) -> dict[str, Any]:
        """Every customer, invoice, invoice item and event the double holds."""
        response = httpx.get(self.url + "/_double/state", timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def requests(self) -> dict[str, Any]:
        """Request counts by path and route, idempotency key counts, and every request."""
        response = httpx.get(self.url + "/_double/requests", timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Stoppable(Protocol):
    def stop(self) -> None: ...


@pytest.fixture
def processes() -> Iterator[list[Stoppable]]:
    """Workers, doubles and receivers a test starts; all stopped at the end, whatever
    happened (last started, first stopped)."""
    started: list[Stoppable] = []
    yield started
    for process in reversed(started):
        process.stop()


@dataclass
class Delivery:
    message_id: str
    type: str
    status: int  # what the receiver answered
    body: dict[str, Any]


class WebhookReceiver:
    """The orchestrator's webhook endpoint, a real HTTP server in the test's process: checks
    each delivery's signature (against `now`, the clock the senders sign with) and that the
    `Metering-Message-Id` header names the body's id, records it, and answers 200, or 500 the
    first time it sees a message id that `refuse_first` picks (a receiver that fails before
    acknowledging: the sender must try again, and the id must still be acted on once). Each
    answer takes `work_s`, as a receiver acting on the message would: a sender's claim on it
    must outlast that."""

    def __init__(self, secret: str, now: Callable[[], float],
                 refuse_first: Callable[[int], bool] = lambda n: False,
                 work_s: float = 0.0) -> None:
        self.secret = secret
        self.work_s = work_s
        self.deliveries: list[Delivery] = []
        self.rejected: list[str] = []  # bad signatures or headers
        self._seen: dict[str, int] = {}  # id -> position of first sight
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._receive(self.headers.get(SIGNATURE_HEADER),
                                           self.headers.get(MESSAGE_ID_HEADER), body,
                                           now(), refuse_first)
                time.sleep(receiver.work_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/metering"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def _receive(self, signature: str | None, message_id: str | None, body: bytes,
                 now: float, refuse_first: Callable[[int], bool]) -> int:
        try:
            verify_signature(self.secret, signature, body, now=now)
            message = json.loads(body)
            if message_id is None or message.get("id") != message_id:
                raise InvalidSignature("Metering-Message-Id does not name the body's id")
        except (InvalidSignature, ValueError) as exc:
            with self._lock:
                self.rejected.append(str(exc))
            return 400
        with self._lock:
            first = message_id not in self._seen
            if first:
                self._seen[message_id] = len(self._seen)
            status = 500 if first and refuse_first(self._seen[message_id]) else 200
            self.deliveries.append(Delivery(message_id, str(message.get("type")), status,
                                            message))
        return status

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.05, explain: Callable[[], str] | None = None) -> float:
    """Poll `condition` until true; answer the seconds it took, or fail naming `what` (and
    what `explain` then says, so a rare failure in CI can be understood from its output)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)
    return time.monotonic() - started
