# make run: install what is missing and run llmp in the foreground (Ctrl-C stops it).
# make test: install what is missing and run every test.
# make check: lint and type-check.  make bench: measure the proxy against nginx alone.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test check bench system-deps-run system-deps-test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps-%:
	scripts/system-deps $*

run: system-deps-run $(STAMP)
	exec $(PY) -m llmp run

test: system-deps-test $(STAMP)
	$(PY) -m pytest

check: $(STAMP)
	$(VENV)/bin/ruff check shared services llmp tests bench
	$(VENV)/bin/ruff format --check shared services llmp tests bench
	$(VENV)/bin/mypy

bench: system-deps-bench $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
