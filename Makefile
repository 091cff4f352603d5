# roomcast — `make run` serves with the embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_PEERS := tests/interop/node
BENCH_NODE := bench/node
BENCH_UWS := bench/uws
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=
CHROMIUM := /usr/bin/chromium
REDIS_SERVER := /usr/bin/redis-server
NGINX := /usr/sbin/nginx

.PHONY: run test install test-deps bench soak conformance-server conformance lint types clean

# The compiled fan-out modules (setup.py, roomcast._speedups): editing one rebuilds it, so the
# compiled run of `make test` never meets a stale build. No compiler: they stay pure Python.
# (-P: the script's own directory holds roomcast/types.py, which must not shadow the stdlib's.)
SPEEDUPS_SOURCES := $(shell $(PYTHON) -P src/roomcast/_speedups.py 2>/dev/null)

$(STAMP): pyproject.toml setup.py $(SPEEDUPS_SOURCES)
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

$(BENCH_NODE)/node_modules/.package-lock.json: $(BENCH_NODE)/package-lock.json
	cd $(BENCH_NODE) && npm ci --no-audit --no-fund --loglevel=error

# The browser the SSE tests drive (tests/browser): Debian's Chromium, through Playwright from
# the test extra (never `playwright install`, which fetches a browser of its own).
$(CHROMIUM):
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The Redis the broker tests run against (tests/redisserver.py starts it on a free port).
$(REDIS_SERVER):
	@command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The reverse proxy the deployment tests run in front of roomcast (tests/nginxserver.py starts it
# on free ports with the config of docs/deploy.md); the package's own service is never used.
$(NGINX):
	@command -v nginx >/dev/null || test -x $(NGINX) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }

test-deps: $(STAMP) $(NODE_PEERS)/node_modules/.package-lock.json $(BENCH_NODE)/node_modules/.package-lock.json $(CHROMIUM) $(REDIS_SERVER) $(NGINX)

# The ceiling the benchmark reads the others against: uWebSockets (`uwebsockets` 3.0.6, a
# third-party npm republish of uWebSockets.js with prebuilt binaries; provenance in
# docs/performance.md). `make bench` only: never a test dependency. No install scripts run.
$(BENCH_UWS)/node_modules/.package-lock.json: $(BENCH_UWS)/package-lock.json
	cd $(BENCH_UWS) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error

# The peers the benchmark runs beside roomcast: python-socketio under uvicorn, Node socket.io.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

# Side by side with the peers, 3 repetitions, medians and ratios (docs/performance.md).
# BENCH_ARGS="--reps 5 --servers roomcast,node" narrows or widens a run.
bench: $(BENCH_STAMP) $(BENCH_NODE)/node_modules/.package-lock.json $(BENCH_UWS)/node_modules/.package-lock.json
	$(PY) bench/run.py $(BENCH_ARGS)

# 15 minutes against a real server: churn on every transport, fan-out, tasks, slow and hostile
# clients, one restart (bench/soak.py); SOAK_MINUTES=3 for a shorter run.
SOAK_MINUTES ?= 15
soak: $(STAMP)
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

test: test-deps
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -q
	# the protocol, hub and transport suites again on the pure-Python fallback (~30 s)
	ROOMCAST_PURE_PYTHON=1 $(PY) -m pytest -q tests/protocol tests/hub tests/transports tests/test_speedups.py

types: $(STAMP)
	$(VENV)/bin/mypy

# Formats and fixes what ruff can; `make test` checks both.
lint: $(STAMP)
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench examples

conformance-server: $(STAMP)
	$(PY) -m roomcast.server.conformance --host 127.0.0.1 --port 3000

# Runs the official suites against a fresh conformance server (needs the suites, see README).
conformance: $(STAMP)
	SERVER_CMD="$(PY) -m roomcast.server.conformance --port 3000" ../shared/conformance/run.sh

clean:
	rm -rf $(VENV) $(NODE_PEERS)/node_modules $(BENCH_NODE)/node_modules build
	find src/roomcast \( -name '*.so' -o -name '*.c' \) -delete
	rm -f src/roomcast/_compiled.json
