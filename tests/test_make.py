"""The Makefile and scripts/: what `make run` and `make test` set up on a fresh machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(*goals: str) -> str:
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), *goals],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_run_test_and_bench_install_their_debian_packages():
    assert "scripts/system-deps run\n" in _dry_run("run")
    assert "scripts/system-deps test\n" in _dry_run("test")
    assert "scripts/system-deps bench\n" in _dry_run("system-deps-bench")
    assert "scripts/system-deps test\n" in _dry_run("soak")


def test_the_ui_is_built_with_scripts_npm():
    for goal in ("ui", "ui-test"):
        commands = [line for line in _dry_run("-B", goal).splitlines() if "npm" in line]
        assert commands, goal
        assert all("/scripts/npm " in line for line in commands), commands


def test_npm_brings_node_24_when_the_machines_node_is_too_old(tmp_path: Path):
    # Debian 12's node (18) in the first folder of PATH: scripts/npm must not use it.
    old = tmp_path / "old-node"
    old.mkdir()
    for name in ("node", "npm"):
        (old / name).write_text('#!/bin/sh\n[ "$1" = --version ] && echo v18.19.0\nexit 1\n')
        (old / name).chmod(0o755)
    done = subprocess.run(
        [str(ROOT / "scripts" / "npm"), "exec", "--", "node", "--version"],
        env={**os.environ, "PATH": f"{old}:{os.environ['PATH']}", "VENV": str(ROOT / ".venv")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("v24."), done.stdout


def _api_types_check(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VENV": str(ROOT / ".venv")}
    return subprocess.run(
        [str(tree / "scripts" / "api-types"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_make_check_fails_when_the_uis_api_types_drift_from_the_api(tmp_path: Path):
    """`make check` runs scripts/api-types --check: in a copy of the tree, the committed
    frontend/src/api/schema.ts passes, and fails (saying what to run) once a field of an
    answer's schema changes."""
    assert "scripts/api-types --check\n" in _dry_run("check")
    tree = tmp_path / "tree"
    for folder in ("scripts", "services", "shared"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "frontend" / "src" / "api").mkdir(parents=True)
    for name in ("package.json", "src/api/schema.ts"):
        (tree / "frontend" / name).write_bytes((ROOT / "frontend" / name).read_bytes())
    (tree / "frontend" / "node_modules").symlink_to(ROOT / "frontend" / "node_modules")
    assert _api_types_check(tree).returncode == 0

    schemas = tree / "services" / "api" / "schemas.py"
    text = schemas.read_text()
    field = "    username: NotRequired[str]  # when valid\n"
    assert field in text
    schemas.write_text(text.replace(field, "    username: NotRequired[str | None]\n"))
    drifted = _api_types_check(tree)
    assert drifted.returncode == 1
    assert "+            username?: string | null;" in drifted.stderr
    assert "run `make api-types` and commit it" in drifted.stderr
