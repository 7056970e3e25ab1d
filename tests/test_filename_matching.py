"""Tests mirror the modules they test: `tests/<folder>/test_<module>.py` tests `<module>.py` of the
package the folder stands for (`tests/proxy/test_routing.py`: `services/proxy/routing.py`), a
module of a sub-package included (`tests/api/test_keys.py`: `services/api/routes/keys.py`).

A test file named for no module of its package is misfiled, unless it is in ALLOWED, with why.
The folders in EXEMPT test llmp as a whole, by behaviour (see their docstrings), not module by
module. Helpers beside the tests (`tests/upstream.py`, `tests/certd/acme.py`) are not test files.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

PACKAGES = {
    "api": "services/api",
    "certd": "services/certd",
    "proxy": "services/proxy",
    "shared": "shared",
    "llmp": "llmp",
    "bench": "bench",
}

# llmp as deployed (supervisord, nginx, several processes) or driven from outside.
EXEMPT = {"stack", "security", "faults", "e2e", "container"}

# Suites for one seam, a file per kind of case: the upstream clients' conformance suite runs
# both implementations of services/proxy/upstream.py against real servers.
SUITES = ("tests/proxy/conformance/",)

ALLOWED = {
    "tests/test_container.py": "the Dockerfile and docker-compose.yml, not a Python module",
    "tests/test_filename_matching.py": "this rule itself",
    "tests/test_make.py": "the Makefile, not a Python module",
    "tests/test_deploy.py": "the deployment examples in deploy/, not a Python module",
    "tests/bench/test_args.py": "bench/__main__.py's command line (a __main__ is no module here)",
    "tests/proxy/test_sharing.py": "the board, the fair queue and the limits together, with"
    " several proxy workers and clients in several processes",
}


def modules(package: str) -> set[str]:
    return {
        path.stem
        for path in (ROOT / package).rglob("*.py")
        if path.stem not in ("__init__", "__main__")
    }


def test_every_test_file_is_named_for_a_module_of_its_package():
    misfiled = []
    for path in sorted(TESTS.rglob("test_*.py")):
        relative = path.relative_to(ROOT).as_posix()
        parts = path.relative_to(TESTS).parts
        folder = parts[0] if len(parts) > 1 else None
        if relative in ALLOWED or folder in EXEMPT or relative.startswith(SUITES):
            continue
        module = path.stem.removeprefix("test_")
        if folder not in PACKAGES or module not in modules(PACKAGES[folder]):
            misfiled.append(relative)
    assert misfiled == [], "name each after the module it tests, or allow it here with why"


def test_the_exceptions_still_exist():
    assert [name for name in ALLOWED if not (ROOT / name).is_file()] == []
    assert [name for name in [*EXEMPT, *PACKAGES] if not (TESTS / name).is_dir()] == []
