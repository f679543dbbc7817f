# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-data
PYTEST_ARGS ?=

.PHONY: install demo test test-fast services bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## demo: 20 synthetic frames through a private Redis, a local worker and SQLite; report in demo-data/work/reports
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/sa2va-queue synth $(DEMO)/frames --n 20 --seed 0
	env -u SA2VA_BROKER_URL -u SA2VA_DATABASE_URL $(BIN)/sa2va-queue --data-dir $(DEMO)/work \
		run $(DEMO)/frames --model vesselness --run-name demo

services:
	bash .ci/services

## test: unit, integration (real Redis, PostgreSQL, Celery worker processes) and e2e; GPU tests skip without CUDA
test: $(STAMP) services
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit $(PYTEST_ARGS)

bench: $(STAMP) services
	$(BIN)/python bench/queue_overhead.py --frames 2000 --size 64 --database both --repeats 3

clean:
	rm -rf $(DEMO) sa2va-data .pytest_cache
