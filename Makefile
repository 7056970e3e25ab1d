# make run: install what is missing and run llmp in the foreground (Ctrl-C stops it).
# make test: install what is missing and run every test.
# make test-fast: the in-process core (no `stack` or `slow` test), in well under a minute.
# make check: lint and type-check.  make bench: measure the proxy against nginx alone.
# make soak: the load test of `make test` (20 s there) for SOAK_SECONDS (300 by default).
# make ui: build the admin web app (frontend/ -> frontend/dist, served at /admin).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast soak check bench ui ui-test system-deps-run system-deps-test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps-%:
	scripts/system-deps $*

# The admin UI: `npm ci` when the lock file changes, a build when a source does.
UI := frontend/dist/index.html
UI_MODULES := frontend/node_modules/.package-lock.json
UI_SOURCES := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html \
	frontend/vite.config.ts frontend/tsconfig.json frontend/package.json

$(UI_MODULES): frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund
	touch $@

$(UI): $(UI_MODULES) $(UI_SOURCES)
	cd frontend && npm run build

ui: $(UI)

ui-test: $(UI_MODULES)
	cd frontend && npm test

run: system-deps-run $(STAMP) $(UI)
	exec $(PY) -m llmp run

test: system-deps-test $(STAMP) $(UI) ui-test
	$(PY) -m pytest

# The folders of `stack` tests (tests/conftest.py) are left out here so they are not even
# imported; the marker leaves out the slow tests of the other folders.
FAST_TESTS := tests/api tests/certd tests/llmp tests/proxy tests/shared tests/test_filename_matching.py
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not stack and not slow" $(FAST_TESTS)

check: $(STAMP)
	$(VENV)/bin/ruff check shared services llmp tests bench
	$(VENV)/bin/ruff format --check shared services llmp tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

SOAK_SECONDS ?= 300
soak: system-deps-test $(STAMP) $(UI)
	LLMP_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -s -o timeout=$$(( $(SOAK_SECONDS) * 2 + 120 )) \
		tests/faults/test_soak.py

bench: system-deps-bench $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache frontend/dist frontend/node_modules
