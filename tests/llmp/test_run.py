"""`llmp run`'s checks before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
