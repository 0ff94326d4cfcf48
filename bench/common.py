"""Shared benchmark plumbing: a fresh database, the service as a subprocess, a fleet of events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("METERING_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length (what the service answers): status, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def cpu_check_ms() -> float:  # float-ok: a duration
    """Milliseconds for a fixed piece of pure-Python work, best of five: how fast this
    machine runs right now. The same code has measured 46 µs an event one day and 77 the
    next here, so every benchmark prints it beside its figures."""
    best = float("inf")  # float-ok
    for _ in range(5):
        started = time.perf_counter()
        sum(i * i for i in range(300_000))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def machine() -> str:
    cores = os.cpu_count()
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return (f"{cores} cores, {mem_kib / 1024 / 1024:.0f} GiB, "
            f"CPU check {cpu_check_ms():.1f} ms (a fixed Python loop; lower is faster)")


def fresh_database(name: str) -> str:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(SERVER)._replace(path=f"/{name}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def service(database_url: str, workers: int = 2, scheduler: bool = False,
            env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Run `metering serve`; yield (base url, admin key)."""
    port = free_port()
    admin = "mk_admin_" + secrets.token_urlsafe(24)
    environment = {**os.environ, "DATABASE_URL": database_url,
                   "METERING_BOOTSTRAP_ADMIN_KEY": admin,
                   "METERING_RUN_SCHEDULER": "true" if scheduler else "false",
                   "METERING_LOG_LEVEL": "WARNING", **(env or {})}
    command = [str(ROOT / ".venv/bin/metering"), "serve", "--port", str(port),
               "--workers", str(workers)]
    with serve_until_ready(command, environment, port) as base:
        yield base, admin


@contextlib.contextmanager
def serve_until_ready(command: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    """Start a server process, wait for its /readyz, yield its base URL, stop it after.

    The server runs in a session of its own, as it does under systemd or in a container:
    where the kernel groups processes by session for scheduling (autogroup), it then does not
    share one group, and one share of the CPU, with the benchmark's load generators."""
    process = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{command[-1]} did not become ready")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def create_key(base: str, admin: str, role: str, team_id: str | None = None) -> str:
    response = httpx.post(base + "/v1/keys", json={"role": role, "team_id": team_id},
                          headers={"Authorization": f"Bearer {admin}"})
    response.raise_for_status()
    return str(response.json()["key"])


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def fleet_events(sandboxes: int, seconds: int, start: datetime, teams: int = 50) -> Iterator[list[dict]]:
    """One list per second of fleet time: `created` for each sandbox first, then one
    `host_stats` per running sandbox per second."""
    def base(i: int) -> tuple[str, str, str]:
        return f"team_{i % teams}", f"sbx_{i:06d}", f"exe_{i:06d}"

    yield [{
        "specversion": "1.0", "id": f"c-{i}", "source": "orchestrator/bench/node-1",
        "type": "sandbox.lifecycle.created", "subject": base(i)[1], "time": iso(start),
        "data": {"team_id": base(i)[0], "execution_id": base(i)[2], "template_id": "base",
                 "vcpu": 2, "memory_mib": 1024, "disk_mib": 10240},
    } for i in range(sandboxes)]
    for second in range(seconds):
        moment = start + timedelta(seconds=second)
        yield [{
            "specversion": "1.0", "id": f"h-{i}-{second}", "source": "orchestrator/bench/node-1",
            "type": "sandbox.host_stats", "subject": base(i)[1],
            "time": iso(moment + timedelta(milliseconds=i % 1000)),
            "data": {"team_id": base(i)[0], "execution_id": base(i)[2],
                     "cpu_pct": round((i * 7 + second) % 1000 / 10, 1),
                     "memory_used_mib": 200 + (i + second) % 700},
        } for i in range(sandboxes)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def now_utc() -> datetime:
    return datetime.now(UTC)


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def service_processes(port: int) -> tuple[psutil.Process | None, list[psutil.Process]]:
    """`metering serve --port <port>` (it runs the scheduler's jobs) and its API processes."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and "--port" in cmdline and str(port) in cmdline:
            children = [c for c in process.children(recursive=True)
                        if "multiprocessing.resource_tracker" not in " ".join(c.cmdline())]
            return process, children
    return None, []


def postgres_processes(database: str) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """PostgreSQL backends serving `database`, and the server's background processes
    (WAL writer, checkpointer, background writer: shared, but on a bench machine the soak
    is what keeps them busy)."""
    backends, background = [], []
    for process in psutil.process_iter(["cmdline", "name"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if not cmdline.startswith("postgres:"):
            continue
        if f" {database} " in f"{cmdline} ":
            backends.append(process)
        elif any(w in cmdline for w in ("walwriter", "checkpointer", "background writer",
                                        "autovacuum")):
            background.append(process)
    return backends, background


class CpuMeter:
    """CPU seconds used by a changing set of processes since the last reading (a process
    that appeared counts from its start; one that vanished stops counting)."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}

    def used(self, processes: list[psutil.Process]) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            now = times.user + times.system
            total += max(now - self.last.get(process.pid, 0.0), 0.0)
            self.last[process.pid] = now
        return total
