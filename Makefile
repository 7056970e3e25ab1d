# make run: install what is missing and run llmp in the foreground (Ctrl-C stops it).
# make test: install what is missing and run every test, in TEST_WORKERS processes (2) side by
# side, a test file each (pytest-xdist): most tests wait on servers, not on the CPU.
# make test-fast: the in-process core (no `stack` or `slow` test), in well under a minute.
# make check: lint and type-check, and check that the admin UI's types are the api's.
# make api-types: generate the admin UI's types from the api (frontend/src/api/schema.ts).
# make bench: measure the proxy against nginx alone.
# make soak: the load test of `make test` (20 s there) for SOAK_SECONDS (300 by default).
# make ui: build the admin web app (frontend/ -> frontend/dist, served at /admin).
# make bench-analytics: every analytics route against a generated database of BENCH_ROWS
# requests (10 million; built once into var/bench-analytics/, which takes a while).
# make bench-limits: what a limited key's request costs counted in Redis against the board.

VENV ?= .venv
TEST_WORKERS ?= 2
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The Debian packages each goal needs. Explicit targets, not a pattern rule: make never looks
# for a pattern rule to build a phony target, so `system-deps-%` would never run.
SYSTEM_DEPS := system-deps-run system-deps-test system-deps-bench

.PHONY: run test test-fast soak check api-types bench bench-analytics bench-limits ui ui-test clean $(SYSTEM_DEPS)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(SYSTEM_DEPS):
	scripts/system-deps $(@:system-deps-%=%)

# The admin UI: `npm ci` when the lock file changes, a build when a source does, on a Node.js
# that can build it (scripts/npm: the machine's if new enough, else one from PyPI in $(VENV)).
NPM := VENV=$(abspath $(VENV)) $(CURDIR)/scripts/npm
UI := frontend/dist/index.html
UI_MODULES := frontend/node_modules/.package-lock.json
UI_SOURCES := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html \
	frontend/vite.config.ts frontend/tsconfig.json frontend/package.json

$(UI_MODULES): frontend/package.json frontend/package-lock.json | $(STAMP)
	cd frontend && $(NPM) ci --no-audit --no-fund
	touch $@

$(UI): $(UI_MODULES) $(UI_SOURCES)
	cd frontend && $(NPM) run build

ui: $(UI)

ui-test: $(UI_MODULES)
	cd frontend && $(NPM) test

run: system-deps-run $(STAMP) $(UI)
	exec $(PY) -m llmp run

test: system-deps-test $(STAMP) $(UI) ui-test
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The folders of `stack` tests (tests/conftest.py) are left out here so they are not even
# imported; the marker leaves out the slow tests of the other folders.
FAST_TESTS := tests/api tests/certd tests/llmp tests/proxy tests/shared tests/test_filename_matching.py
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not stack and not slow and not container" $(FAST_TESTS)

check: $(STAMP) $(UI_MODULES)
	$(VENV)/bin/ruff check shared services llmp tests bench
	$(VENV)/bin/ruff format --check shared services llmp tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	VENV=$(abspath $(VENV)) scripts/api-types --check

# The UI's types of the api's answers and bodies, from its OpenAPI document: run after changing
# services/api/schemas.py or a route, and commit the file (make check fails until then).
api-types: $(STAMP) $(UI_MODULES)
	VENV=$(abspath $(VENV)) scripts/api-types

SOAK_SECONDS ?= 300
soak: system-deps-test $(STAMP) $(UI)
	LLMP_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -s -o timeout=$$(( $(SOAK_SECONDS) * 2 + 120 )) \
		tests/faults/test_soak.py

bench: system-deps-bench $(STAMP)
	$(PY) -m bench

BENCH_ROWS ?= 10000000
bench-analytics: $(STAMP)
	$(PY) -m bench.analytics --rows $(BENCH_ROWS)

bench-limits: system-deps-test $(STAMP)
	$(PY) -m bench.limits

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache frontend/dist frontend/node_modules
