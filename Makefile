# roomcast — `make run` serves with the embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_PEERS := tests/interop/node

.PHONY: run test install test-deps conformance-server conformance lint types clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/roomcast serve

# The npm peers (official socket.io-client, and socket.io for the reference server).
$(NODE_PEERS)/node_modules/.package-lock.json: $(NODE_PEERS)/package-lock.json
	cd $(NODE_PEERS) && npm ci --no-audit --no-fund --loglevel=error

test-deps: $(STAMP) $(NODE_PEERS)/node_modules/.package-lock.json

test: test-deps
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

types: $(STAMP)
	$(VENV)/bin/mypy

conformance-server: $(STAMP)
	$(PY) -m roomcast.server.conformance --host 127.0.0.1 --port 3000

# Runs the official suites against a fresh conformance server (needs the suites, see README).
conformance: $(STAMP)
	SERVER_CMD="$(PY) -m roomcast.server.conformance --port 3000" ../shared/conformance/run.sh

clean:
	rm -rf $(VENV) $(NODE_PEERS)/node_modules
