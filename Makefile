# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck unit bench demo clean api-docs

# The orchestrator client is its own package (clients/python); the tests use it, so the dev
# environment installs it beside the service.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e clients/python
	touch $(STAMP)

install: $(STAMP)

HOST ?= 127.0.0.1
PORT ?= 8000

# Migrates and serves on http://127.0.0.1:8000 (`make run PORT=8001` for another port);
# embedded PostgreSQL unless DATABASE_URL is set. Ctrl-C stops both.
run: install
	@$(BIN)/metering serve --host $(HOST) --port $(PORT)

# The service plus a simulated orchestrator: the dashboard moves within a minute.
demo: install
	$(BIN)/python -m billing.demo

# docs/api.md from the served OpenAPI document (a test fails when they differ).
api-docs: install
	$(BIN)/python -m billing.api_reference docs/api.md

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

# The embedded PostgreSQL is stopped before its data directory goes.
clean:
	@if [ -x $(BIN)/metering ]; then METERING_DATA_DIR=.metering-data $(BIN)/metering db stop --force; fi
	rm -rf $(VENV) .metering-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
