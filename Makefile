# The two commands of the README's Quick start are `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench services clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## Start Lunas on the embedded default (SQLite, in-process state): api + worker in one process group.
run: $(STAMP)
	$(BIN)/lunas run --demo

## The whole suite on PostgreSQL and Redis: lint, strict typing, every test.
test: $(STAMP) services lint typecheck pytest

services:
	bash scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) services
	$(BIN)/pytest -q -n 3 --dist worksteal

bench: $(STAMP) services
	$(BIN)/python bench/capture.py
	$(BIN)/python bench/failover.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/reconcile.py --together --output bench/results/reconcile-together.json
	$(BIN)/python bench/reconcile_floor.py
	$(BIN)/python bench/statuspage.py
	$(BIN)/python bench/table.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache lunas.db
