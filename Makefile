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

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml requirements/dev.txt requirements/sqlalchemy-$(SQLALCHEMY).txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/dev.txt \
		-r requirements/sqlalchemy-$(SQLALCHEMY).txt -e '.[dev]'
	@touch $@

demo: $(STAMP)  ## the 1-minute demonstration on an embedded SQLite database
	$(BIN)/python examples/capture_demo.py

test: $(STAMP)  ## the whole test suite (services that are down are skipped, or fail in CI)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff lint + format check, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  ## capture overhead on SQLite and PostgreSQL (see docs/benchmarks.md)
	$(BIN)/python bench/capture_overhead.py $(BENCH_ARGS)

clean:
	rm -rf .venv .venv-sqlalchemy-* .pytest_cache .mypy_cache .ruff_cache .hypothesis
