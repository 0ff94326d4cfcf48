"""Fault-injection plumbing: the real service as a subprocess on a fresh database, which a
test can SIGKILL and restart, and a fleet of events whose exact usage is known in advance.

These tests are marked `faults` (`pytest -m "not faults"` leaves them out). Each prints its
figures; run with `-s` to see them.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from tests.conftest import SERVER_URL

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: kills processes and cuts connections (slow)")


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


class Service:
    """`metering serve` in its own process group, so SIGKILL takes every process of it."""

    def __init__(self, database_url: str, workers: int = 1, scheduler: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "mk_admin_" + secrets.token_urlsafe(24)
        self.workers = workers
        self.env = {**os.environ, "DATABASE_URL": database_url,
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

    def kill(self) -> None:
        """SIGKILL, no warning: in-flight requests and transactions die with it."""
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
