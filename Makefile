# make run: install what is missing and run llmp in the foreground (Ctrl-C stops it).
# make test: install what is missing and run every test.
# make check: lint and type-check.  make bench: measure the proxy against nginx alone.
# make soak: the load test of `make test` (20 s there) for SOAK_SECONDS (300 by default).
# make ui: build the admin web app (frontend/ -> frontend/dist, served at /admin).
# make bench-analytics: every analytics route against a generated database of BENCH_ROWS
# requests (10 million; built once into var/bench-analytics/, which takes a while).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test soak check bench bench-analytics ui ui-test system-deps-run system-deps-test clean

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

check: $(STAMP)
	$(VENV)/bin/ruff check shared services llmp tests bench
	$(VENV)/bin/ruff format --check shared services llmp tests bench
	$(VENV)/bin/mypy

SOAK_SECONDS ?= 300
soak: system-deps-test $(STAMP) $(UI)
	LLMP_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -s -o timeout=$$(( $(SOAK_SECONDS) * 2 + 120 )) \
		tests/faults/test_soak.py

bench: system-deps-bench $(STAMP)
	$(PY) -m bench

BENCH_ROWS ?= 10000000
bench-analytics: $(STAMP)
	$(PY) -m bench.analytics --rows $(BENCH_ROWS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache frontend/dist frontend/node_modules
