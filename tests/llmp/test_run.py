"""`llmp run`'s checks before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llmp import run
from shared.apikeys import ApiKey, load_keys, write_keys

ROOT = Path(__file__).resolve().parents[2]


def test_run_refuses_a_directory_where_env_should_be(tmp_path: Path):
    # docker compose up without a .env: compose mounts a directory it made in its place.
    env = tmp_path / ".env"
    env.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "llmp", "--env-file", str(env), "run"],
        cwd=ROOT,
        env={**os.environ, "DATA_DIR": str(tmp_path / "data"), "STATE_DIR": str(tmp_path / "var")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "is a directory where the settings file should be" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing started, nothing made


def test_a_fresh_install_gets_an_empty_key_file_and_a_deleted_one_keeps_its_keys(tmp_path):
    path = tmp_path / "apikeys.json"
    run.ensure_key_file(path)
    assert load_keys(path) == ([], None)
    alice = ApiKey.new("alice")
    write_keys(path, [alice])
    path.unlink()  # deleted by hand, then llmp restarted
    run.ensure_key_file(path)
    keys, why = load_keys(path)
    assert keys == [alice] and why is not None  # served from the last good copy, and said
