# The single entry point: setup, run, test, lint, protos, bench.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test lint format protos bench up down clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[services,dev]'
	bash scripts/ensure-servers.sh $(VENV)
	touch $@

DEMO_DB := .tradeflow/demo.db

run: setup
	@mkdir -p .tradeflow && rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	$(BIN)/tradeflow run examples/mean_reversion.json --prices examples/prices.json \
		--db $(DEMO_DB) --count 5 --interval 0.3

test: setup
	$(PY) -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint protos
	$(PY) scripts/gen_protos.py --check

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up: setup
	$(BIN)/tradeflow stack up

down: setup
	$(BIN)/tradeflow stack down

protos: setup
	$(PY) scripts/gen_protos.py

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
