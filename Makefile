# The two commands: `make run` and `make test`. Needs only Python 3.11+ and make.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install bench lint

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PY=python3.11)")'
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/escrow migrate
	@echo "Demo API keys (shown once; only their digests are stored):"
	@$(BIN)/escrow keys demo
	@echo "Serving on http://$(HOST):$(PORT)  (OpenAPI docs at /docs)"
	$(BIN)/escrow serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check escrow tests bench migrations
	$(BIN)/mypy escrow

bench: install
	$(BIN)/python bench/ledger.py
