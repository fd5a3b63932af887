# Every target creates (or reuses) its own virtual environment; nothing else is needed but
# Python 3.11+. `make test SQLALCHEMY=2.0` runs the suite on the newest SQLAlchemy 2.0.
PYTHON ?= python3
SQLALCHEMY ?= 2.1
ifeq ($(SQLALCHEMY),2.1)
VENV ?= .venv
else
VENV ?= .venv-sqlalchemy-$(SQLALCHEMY)
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(SQLALCHEMY)

.PHONY: demo demo-capture serve test lint format bench load clean

$(STAMP): pyproject.toml requirements/dev.txt requirements/sqlalchemy-$(SQLALCHEMY).txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/dev.txt \
		-r requirements/sqlalchemy-$(SQLALCHEMY).txt -e '.[dev]'
	@touch $@

# The reference application (examples/marketplace, the Python package `marketplace`).
MARKETPLACE := PYTHONPATH=examples $(BIN)/python -m marketplace

demo: $(STAMP)  ## the before/after table: one workload, every endpoint, naive/tuned/handwritten (SQLite)
	$(MARKETPLACE).demo $(DEMO_ARGS)

demo-capture: $(STAMP)  ## capture a naive loop; see, budget, detect and autoload its N+1 (SQLite)
	$(BIN)/python examples/capture_demo.py

SERVE_DATABASE ?= marketplace.db
serve: $(STAMP)  ## the marketplace in tuned mode on http://127.0.0.1:8000 (/docs, /metrics)
	@test -f $(SERVE_DATABASE) || $(MARKETPLACE).data --users 1000 \
		--database-url sqlite+aiosqlite:///$(SERVE_DATABASE)
	$(MARKETPLACE) serve --mode tuned --port 8000 \
		--database-url sqlite+aiosqlite:///$(SERVE_DATABASE) $(SERVE_ARGS)

test: $(STAMP)  ## the whole test suite (services that are down are skipped, or fail in CI)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff lint + format check, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The benchmarks get their own environment and interpreter: on CPython 3.11, SQLAlchemy 2.1's
# compiled extensions can crash in garbage collection during long ORM loops (with or without
# ormtune; bench/repro/ has the reproducer), so docs/benchmarks.md was made with
# BENCH_PYTHON=python3.12 (here: /root/.pyenv/versions/3.12.1/bin/python).
BENCH_PYTHON ?= $(PYTHON)
BENCH_VENV ?= .venv-bench

$(BENCH_VENV)/.installed: pyproject.toml requirements/dev.txt requirements/sqlalchemy-2.1.txt
	$(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -c requirements/dev.txt \
		-r requirements/sqlalchemy-2.1.txt -e '.[dev]'
	@touch $@

bench: $(BENCH_VENV)/.installed  ## every benchmark (see docs/benchmarks.md)
	$(BENCH_VENV)/bin/python bench/capture_overhead.py $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python bench/autoload.py $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python bench/write_loops.py
	$(BENCH_VENV)/bin/python bench/cohort_cost.py
	$(BENCH_VENV)/bin/python bench/unused_eager.py
	$(BENCH_VENV)/bin/python bench/detection_cpu.py
	$(BENCH_VENV)/bin/python bench/cache_hit.py
	$(BENCH_VENV)/bin/python bench/cache_hit_breakdown.py
	$(BENCH_VENV)/bin/python bench/cache_hitrate.py
	$(BENCH_VENV)/bin/python bench/instrumentation_overhead.py $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python bench/audit_overhead.py $(BENCH_ARGS)

# The load test (bench/load/): locust against two uvicorn processes on PostgreSQL + Redis.
$(BENCH_VENV)/.installed-load: $(BENCH_VENV)/.installed bench/load/requirements.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet -c requirements/dev.txt \
		-r bench/load/requirements.txt
	@touch $@

load: $(BENCH_VENV)/.installed-load  ## the load test (docs/benchmarks.md, "Load test"); LOAD_ARGS=...
	PYTHONPATH=examples $(BENCH_VENV)/bin/python bench/load/run.py $(LOAD_ARGS)

clean:
	rm -rf .venv .venv-sqlalchemy-* .venv-bench .pytest_cache .mypy_cache .ruff_cache .hypothesis
