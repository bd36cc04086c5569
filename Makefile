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

# `make run` also starts the bank/card simulator on $(SIM_PORT) and an outbox worker, all
# stopped when the server stops; the service reaches the simulator by configuration only.
# A development webhook secret is generated once into var/ (as is the account key).
SIM_PORT ?= 8100

run: install
	$(BIN)/escrow migrate
	@test -s var/webhook-secret || $(BIN)/python -c 'import base64, secrets; print("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())' > var/webhook-secret
	@echo "Demo API keys (shown once; only their digests are stored):"
	@$(BIN)/escrow keys demo
	@echo "Simulator on http://$(HOST):$(SIM_PORT); serving on http://$(HOST):$(PORT)  (OpenAPI docs at /docs)"
	@secret=$$(cat var/webhook-secret); \
	export ESCROW_BANK_URL=http://$(HOST):$(SIM_PORT) ESCROW_CARD_URL=http://$(HOST):$(SIM_PORT) \
	       ESCROW_WEBHOOK_SECRETS_BANK=$$secret ESCROW_WEBHOOK_SECRETS_CARD=$$secret; \
	$(BIN)/python -m simulators --host $(HOST) --port $(SIM_PORT) \
	    --webhook-url http://$(HOST):$(PORT)/v1/webhooks --webhook-secret $$secret & sim=$$!; \
	$(BIN)/escrow worker & worker=$$!; \
	trap 'kill $$sim $$worker 2>/dev/null; wait $$sim $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/escrow serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check escrow adapters simulators tests bench migrations
	$(BIN)/ruff format --check escrow adapters simulators tests bench migrations
	$(BIN)/mypy escrow

bench: install
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/payouts.py
