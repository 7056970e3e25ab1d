"""A small data disk (a tmpfs) that a key holder tries to fill, and that fills anyway: rows stay
small, and a key can still be revoked once the disk is full."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api import sessions
from services.api.app import create_app
from tests.conftest import eventually

MODEL = "m" * 1_000_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/data` as a 16 MB filesystem of its own: room for what llmp keeps there (the
    analytics' write-ahead log alone may grow to about 4 MB between checkpoints, which filled a
    4 MB disk before the test did) and far less than what a key holder sends."""
    if os.geteuid() != 0:
        pytest.skip("a small data disk needs mount (root)")
    folder = tmp_path / "data"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, timeout=10)
    assert done.returncode == 0, done
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=10)


def fill(folder: Path) -> Path:
    """Write a file until the disk is full."""
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_key_holder_cannot_fill_the_disk_and_a_full_disk_still_revokes(
    small_disk, upstreams, proxy
):
    running = proxy(upstreams("a", ["model-a"]), payload_limit=2_000_000, jwt_secret="j" * 40)
    token = sessions.for_settings(running.settings).issue("admin")
    api = TestClient(create_app(running.settings), headers={"Authorization": f"Bearer {token}"})
    with api:
        created = api.post("/api/keys", json={"username": "filler"}).json()["key"]
        secret = {"Authorization": f"Bearer {created['key']}"}
        with running.client(None) as client:
            chat = lambda model: client.post(  # noqa: E731
                "/v1/chat/completions", json={"model": model}, headers=secret
            )
            eventually(lambda: chat("model-a").status_code == 200)
            for _ in range(24):  # 24 MB of model names on a 16 MB disk
                assert chat(MODEL).status_code == 200
            rows = running.rows()
            assert len(rows) == 25 and all(len(r["model"]) <= 512 for r in rows)
            assert (small_disk / "analytics.db").stat().st_size < 1_000_000
            filler = fill(small_disk)
            assert chat("model-a").status_code == 200
            r = api.delete(f"/api/keys/{created['id']}")
            assert r.status_code == 200, r.text
            eventually(lambda: chat("model-a").status_code == 401)
            assert api.get("/api/keys").json()["keys"] == []
            filler.unlink()
            created = api.post("/api/keys", json={"username": "again"})
            assert created.status_code == 200
            assert (small_disk / ".apikeys.json.reserve").stat().st_size == 1024 * 1024
