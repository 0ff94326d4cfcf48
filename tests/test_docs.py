"""The repository's own description of itself: the README's first steps work exactly as
written, and docs/api.md is the API the service serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billing import api_reference
from metering import embedded

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def block(name: str) -> str:
    """The shell code between `<!-- name -->` and `<!-- /name -->` in the README."""
    text = README.read_text()
    found = re.search(rf"<!-- {re.escape(name)} -->\s*```sh\n(.*?)```\s*<!-- /{re.escape(name)} -->",
                      text, re.S)
    assert found, f"README has no {name} block"
    return found.group(1)


def test_docs_api_md_is_the_served_openapi_document() -> None:
    expected = api_reference.render(api_reference.served_document())
    written = (ROOT / "docs" / "api.md").read_text()
    assert written == expected, (
        "docs/api.md differs from the OpenAPI document the service serves: run `make api-docs`"
        " and commit docs/api.md")


def test_the_reference_names_every_served_endpoint_and_schema() -> None:
    document = api_reference.served_document()
    text = api_reference.render(document)
    for path, operations in document["paths"].items():
        for method in operations:
            assert f"### {method.upper()} `{path}`" in text
    for name in document["components"]["schemas"]:
        assert f"### {name}\n" in text


def test_the_readme_stands_alone() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        assert not target.startswith(".."), f"README links outside the repository: {target}"
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory the embedded PostgreSQL's own system user can reach when the tests run as
    root: not under pytest's base directory, which every pytest start resets to 0700."""
    path = Path(tempfile.mkdtemp(prefix="metering-test-"))
    path.chmod(0o755)
    yield path
    embedded.stop(path / "clone" / ".metering-data")
    shutil.rmtree(path, ignore_errors=True)


def _namespace_ok() -> bool:
    """A private network namespace (own loopback): the README's port 8000 is then ours even
    when another service on this machine holds it."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def _answers(stdout: str) -> list[Any]:
    """The JSON answers of the curls, which print them back to back without newlines."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while i < len(stdout):
        if stdout[i].isspace():
            i += 1
            continue
        value, i = decoder.raw_decode(stdout, i)
        out.append(value)
    return out


@pytest.mark.skipif(not _namespace_ok(), reason="needs `unshare -n` (a private loopback for "
                    "port 8000); run as root or with user namespaces")
def test_the_readme_first_steps_run_verbatim_from_a_clean_data_directory(
    outside_tmp: Path,
) -> None:
    # `make run` installs first when the environment is older than pyproject.toml; the test
    # must not install anything (`make test` has just run `make install`).
    if subprocess.run(["make", "-q", "install"], cwd=ROOT, check=False).returncode != 0:
        pytest.skip("the environment is out of date: run `make install` first")
    work = outside_tmp / "clone"
    work.mkdir()
    # A fresh clone's directory: the repository's files (linked, so `make` sees the same
    # times and finds the environment `make install` made up to date) and no data yet.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in {path.split("/")[0] for path in tracked} | {".venv"}:
        (work / name).symlink_to(ROOT / name)
    script = f"""
set -euo pipefail
ip link set lo up
cd {work}
( {block("first-steps:serve").strip()} ) > serve.log 2>&1 &
server=$!
for _ in $(seq 900); do
  curl -sf localhost:8000/readyz > /dev/null && break
  kill -0 $server 2> /dev/null || {{ cat serve.log; exit 3; }}
  sleep 0.2
done
{block("first-steps")}
kill -TERM $server
wait $server || true
"""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("METERING_") and k != "DATABASE_URL"}
    result = subprocess.run(["unshare", "-n", "bash", "-c", script], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    log = (work / "serve.log").read_text() if (work / "serve.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log
    assert result.stderr == "", result.stderr
    posted, executions, balance = _answers(result.stdout)

    batch = json.loads((work / "batch.json").read_text())
    assert posted == {"accepted": len(batch), "duplicates": 0, "rejected": 0, "errors": []}
    [execution] = executions["data"]
    assert (execution["vcpu_seconds"], execution["gib_seconds"], execution["cost"]) == (
        "1200", "600", "0.0195")
    assert (balance["credit_granted"], balance["credit_used"], balance["credit_remaining"]) == (
        "100.00", "0.02", "99.98")
    # The service's terminal: the banner, one line per API request, nothing else.
    assert "Press Ctrl-C to stop." in log and "Traceback" not in log, log
    assert len(log.splitlines()) <= 15, log
    # And the database went with it.
    assert not embedded.status(work / ".metering-data").running
