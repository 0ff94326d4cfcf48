"""Schemathesis against the served OpenAPI document, with a valid key of each role.

For every operation in `GET /openapi.json` and every role (ingest, team bound to a seeded
team, finance, admin), schemathesis generates requests (positive: valid per the schema;
negative: invalid per the schema), sends them over real HTTP to an app of its own (`served`),
and checks each response:

- `not_a_server_error`: no 5xx, ever (a 5xx is a bug, never a known gap);
- `status_code_conformance`: the status is documented for the operation;
- `content_type_conformance`: the media type is the documented one;
- `response_schema_conformance`: the body matches the documented schema of its status.

Half of the positive examples of an operation with a `team_id`, `sandbox_id` or `code` path
parameter use the seeded team, sandbox or plan, so reads return data (not only 404s).
Generation is derandomized (a fixed seed) and small (`MAX_EXAMPLES` per operation, mode and
role), so the run is deterministic and takes about 50 s for the four roles.

Failures are collected, deduplicated by (operation, failure kind, status) and reported all
at once with the request that triggers each (as curl, keys redacted) and what came back.

Excluded, on purpose:
- `POST /v1/stripe/webhook`: authenticated by a Stripe signature over the raw body, not by an
  API key; random bodies only exercise the signature check, and the test app has no webhook
  secret configured. Covered by tests/billing/test_stripe_webhooks.py.
- Not in the OpenAPI document at all (`include_in_schema=False`), so not reachable by this
  test: the `/dashboard/...` HTML pages and their JSON (session-cookie auth; covered by
  tests/dashboard) and `GET /metrics` (Prometheus text; covered by test_observability.py).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
import schemathesis.specs.openapi.schemas  # imported at collection: see below
import uvicorn
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.failures import Failure, FailureGroup

# `schemathesis.openapi.from_url` imports this module lazily; under pytest the first import
# parses it (assertion rewriting). Doing that while the served app's thread is busy can hit
# CPython 3.11's "AST constructor recursion depth mismatch" (a parse racing another thread's
# compile), so it is imported here, at collection, with no server running.
from sqlalchemy.engine import Engine

from billing.app import create_app
from metering.config import KeyLimit, Settings
from tests.conftest import Keys, event

MAX_EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}

EXCLUDED_PATHS = ["/v1/stripe/webhook"]

CHECK_NAMES = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]

SEED_TEAMS = {"team_hobby": "hobby", "team_pro": "pro", "team_enterprise": "enterprise"}
TEAM = "team_pro"  # the team key's team, and the seeded value of `team_id` path parameters
SANDBOX = "sbx_seed"
SEEDED_PATH_VALUES = {"team_id": TEAM, "sandbox_id": SANDBOX, "code": "pro"}

ROLES = ["ingest", "team", "finance", "admin"]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def seed(base: str, keys: Keys) -> None:
    """A team on each plan, and one finished and one running execution of the seeded team."""
    finance = {"Authorization": f"Bearer {keys.finance}"}
    for team_id, plan in SEED_TEAMS.items():
        r = requests.put(f"{base}/v1/teams/{team_id}", json={"plan": plan, "name": team_id},
                         headers=finance, timeout=10)
        assert r.status_code == 200, r.text
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=2)
    batch = [
        event("created", team=TEAM, sandbox=SANDBOX, execution="exe_seed_1", time=iso(start),
              vcpu=2, memory_mib=1024),
        event("host_stats", team=TEAM, sandbox=SANDBOX, execution="exe_seed_1",
              time=iso(start + timedelta(minutes=1)), cpu_pct=12.5, memory_used_mib=300),
        event("killed", team=TEAM, sandbox=SANDBOX, execution="exe_seed_1",
              time=iso(start + timedelta(hours=1))),
        event("created", team=TEAM, sandbox="sbx_seed_2", execution="exe_seed_2",
              time=iso(now - timedelta(minutes=5)), vcpu=1, memory_mib=512),
    ]
    r = requests.post(f"{base}/v1/events", json=batch,
                      headers={"Authorization": f"Bearer {keys.ingest}"}, timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == len(batch), r.text


@dataclass
class Finding:
    operation: str
    kind: str
    status: int | None
    message: str
    request: str
    response: str
    roles: set[str] = field(default_factory=set)
    modes: set[str] = field(default_factory=set)

    @property
    def is_server_error(self) -> bool:
        return self.status is not None and self.status >= 500

    def render(self) -> str:
        return (f"- {self.operation}: {self.kind} (status {self.status}; roles "
                f"{','.join(sorted(self.roles))}; {'/'.join(sorted(self.modes))})\n"
                f"    {self.message.strip().replace(chr(10), chr(10) + '    ')}\n"
                f"    request:  {self.request}\n"
                f"    response: {self.response}")


@dataclass
class Run:
    findings: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)
    requests: int = 0
    statuses: dict[str, set[int]] = field(default_factory=dict)
    not_generated: list[str] = field(default_factory=list)

    def record(self, role: str, mode: str, operation: str, kind: str, status: int | None,
               message: str, request: str, response: str) -> None:
        key = (operation, kind, status)
        found = self.findings.setdefault(
            key, Finding(operation, kind, status, message, request, response))
        found.roles.add(role)
        found.modes.add(mode)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<key>")
    return text


def exercise(schema: Any, role: str, key: str, secrets: list[str], run: Run) -> None:
    """Every operation of `schema` in both generation modes with `key`."""
    load_all_checks()
    checks = CHECKS.get_by_names(CHECK_NAMES)
    session = requests.Session()

    def send_and_check(mode: GenerationMode, label: str) -> Callable[[Any], None]:
        def one(case: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
            try:
                response = case.call(session=session, timeout=30)
            except requests.RequestException as exc:
                run.record(role, mode.value, label, f"no response: {type(exc).__name__}",
                           None, str(exc)[:300], redact(case.as_curl_command(), secrets), "")
                return
            run.requests += 1
            run.statuses.setdefault(label, set()).add(response.status_code)
            try:
                case.validate_response(response, checks=checks)
            except FailureGroup as group:
                failures: list[Failure] = list(group.exceptions)
                curl = redact(case.as_curl_command(
                    headers=dict(response.request.headers)), secrets)
                body = redact(response.text_lossy()[:400], secrets)
                for failure in failures:
                    run.record(role, mode.value, label, failure.title,
                               response.status_code, failure.message[:600], curl,
                               f"{response.status_code} {body}")

        return one

    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label
        seeded = {name: SEEDED_PATH_VALUES[name]
                  for name in re.findall(r"{(\w+)}", operation.path) if name in SEEDED_PATH_VALUES}
        for mode, examples in MAX_EXAMPLES.items():
            strategy = operation.as_strategy(generation_mode=mode)
            if seeded and mode is GenerationMode.POSITIVE:
                strategy = st.one_of(
                    strategy, operation.as_strategy(generation_mode=mode, path_parameters=seeded))

            one = send_and_check(mode, label)

            test: Callable[[], None] = hypothesis.settings(
                max_examples=examples, derandomize=True, deadline=None, database=None,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                print_blob=False,
            )(hypothesis.given(strategy)(one))
            try:
                test()
            except (hypothesis.errors.Unsatisfiable, schemathesis.errors.SerializationNotPossible
                    ) as exc:
                run.not_generated.append(f"{label} [{mode.value}]: {type(exc).__name__}")


@pytest.fixture(scope="module")
def served(database_url: str, engine: Engine, settings: Settings) -> Iterator[str]:
    """An app of its own from `create_app`, served over real HTTP on 127.0.0.1: the shared
    session `app` fixture is not used because other tests include routers into it, which
    would change the document under test."""
    # The document is under test here, not the per-key allowances (tested on their own).
    unlimited = settings.model_copy(update={"key_limits": {
        role: KeyLimit() for role in ("ingest", "unresolved", "team", "finance", "admin")}})
    app = create_app(unlimited, database_url=database_url, migrate_on_start=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
    app.state.engine.dispose()


@pytest.mark.parametrize("role", ROLES)
def test_api_matches_its_openapi_document(
    role: str, served: str, api_keys: Keys, sessions: Any,
) -> None:
    seed(served, api_keys)
    team_key = api_keys.team(sessions, TEAM)
    key = {"ingest": api_keys.ingest, "team": team_key, "finance": api_keys.finance,
           "admin": api_keys.admin}[role]
    secrets = [api_keys.ingest, api_keys.finance, api_keys.admin, team_key]

    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    for path in EXCLUDED_PATHS:
        schema = schema.exclude(path=path)

    run = Run()
    started = time.perf_counter()
    exercise(schema, role, key, secrets, run)
    elapsed = time.perf_counter() - started

    # Guard against a silently empty run: every operation answered, most with something.
    operations = [r.ok().label for r in schema.get_all_operations()]
    assert set(run.statuses) == set(operations), set(operations) - set(run.statuses)
    summary = (f"{role}: {len(operations)} operations, {run.requests} requests in "
               f"{elapsed:.1f}s; not generated: {run.not_generated or 'none'}")
    print(summary)

    server_errors = [f for f in run.findings.values() if f.is_server_error or f.status is None]
    mismatches = [f for f in run.findings.values() if f not in server_errors]
    report = [summary]
    if server_errors:
        report.append(f"{len(server_errors)} SERVER ERROR(S) / NO RESPONSE (bugs):")
        report.extend(f.render() for f in server_errors)
    if mismatches:
        report.append(f"{len(mismatches)} response(s) not matching the OpenAPI document:")
        report.extend(f.render() for f in mismatches)
    assert not server_errors and not mismatches, "\n".join(report)
