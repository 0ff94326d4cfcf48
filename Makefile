# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck unit bench demo clean

# The orchestrator client is its own package (clients/python); the tests use it, so the dev
# environment installs it beside the service.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e clients/python
	touch $(STAMP)

install: $(STAMP)

# Migrates and serves on http://127.0.0.1:8000; embedded PostgreSQL unless DATABASE_URL is set.
run: install
	$(BIN)/metering serve --host 127.0.0.1 --port 8000

# The service plus a simulated orchestrator: the dashboard moves within a minute.
demo: install
	$(BIN)/python -m billing.demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q -n 2 --dist loadfile

test: lint typecheck unit

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/storage.py

clean:
	rm -rf $(VENV) .metering-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
