"""The proxy started on a read-only data disk (a volume mounted read-only, or one whose files
belong to someone else): it serves with the keys it can read, says in its log what it cannot
write, keeps the analytics rows in memory, and writes every one of them once the disk is
writable again, without touching what was already stored.

A real read-only filesystem where we can mount one (a tmpfs, remounted read-only: root with
CAP_SYS_ADMIN), file modes elsewhere (which bind everyone but root).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared import analytics
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, write_keys
from tests.conftest import eventually, free_port
from tests.upstream import FakeUpstream


class ReadOnly:
    """Makes `folder` read-only and writable again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.mounted = False
        if os.geteuid() == 0:
            # Root ignores file modes: only a read-only filesystem stops it.
            mount = ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(folder)]
            done = subprocess.run(mount, capture_output=True, timeout=10)
            assert done.returncode == 0, f"as root, a read-only data disk needs mount: {done}"
            self.mounted = True

    def _modes(self, writable: bool) -> None:
        for path in [self.folder, *self.folder.rglob("*")]:
            if path.is_dir():
                path.chmod(0o700 if writable else 0o500)
            else:
                path.chmod(0o600 if writable else 0o400)

    def _remount(self, option: str) -> None:
        command = ["mount", "-o", f"remount,{option}", str(self.folder)]
        done = subprocess.run(command, capture_output=True, timeout=10)
        assert done.returncode == 0, done

    def read_only(self) -> None:
        if self.mounted:
            self._remount("ro")
        else:
            self._modes(writable=False)

    def writable(self) -> None:
        if self.mounted:
            self._remount("rw")
        else:
            self._modes(writable=True)

    def remove(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True, timeout=10)
        else:
            self._modes(writable=True)


@pytest.fixture
def data(tmp_path: Path) -> Iterator[ReadOnly]:
    disk = ReadOnly(tmp_path / "data")
    yield disk
    disk.remove()


def test_read_only_data_disk_serves_and_writes_every_row_once_writable(tmp_path, data):
    upstream = FakeUpstream("a", ["model-a"], chunks=3).start()
    key = ApiKey.new("reader")
    write_keys(data.folder / "apikeys.json", [key])
    db = analytics.connect(data.folder / "analytics.db")
    analytics.insert(db, [RequestRow(f"old{i}", key.id, "reader", i) for i in range(3)])
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    stored = (data.folder / "analytics.db").read_bytes()
    # A heartbeat of a worker gone long ago, which the proxy tidies away at start.
    run = data.folder / "run"
    run.mkdir()
    old = {"program": "proxy", "pid": 1, "started": 0, "updated": 0, "name": "proxy-1"}
    (run / "proxy-1.json").write_text(json.dumps(old))
    data.read_only()

    port = free_port()
    (tmp_path / "env").write_text("")
    env = {
        **os.environ,
        "ENV_FILE": str(tmp_path / "env"),
        "DATA_DIR": str(data.folder),
        "STATE_DIR": str(tmp_path / "var"),
        "PROXY_PORT": str(port),
        "PROXY_WORKERS": "1",
        "TARGET_URLS": upstream.url,
    }
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "services.proxy"], env=env, stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {key.key}"}

        def ask(stream: bool = False, who: dict[str, str] = headers) -> httpx.Response:
            body = {"model": "model-a", "messages": [], "stream": stream}
            return httpx.post(url, json=body, headers=who, timeout=5)

        def up() -> bool:
            assert proxy.poll() is None, log.read_text()
            try:
                return ask().status_code == 200
            except httpx.TransportError:
                return False

        eventually(up, timeout=15)
        answers = [ask(stream=i % 2 == 1) for i in range(6)]
        assert [r.status_code for r in answers] == [200] * 6
        stranger = {"Authorization": f"Bearer {ApiKey.new('x').key}"}
        assert ask(who=stranger).status_code == 401
        eventually(lambda: "analytics not written" in log.read_text(), timeout=5)
        assert "heartbeat not written" in log.read_text()
        time.sleep(1.0)  # a few more failed flushes and heartbeats
        assert log.read_text().count("heartbeat not written") == 1  # said once, not every beat
        assert (data.folder / "analytics.db").read_bytes() == stored

        data.writable()
        ids = {r.headers["x-request-id"] for r in answers}

        def written() -> list[str]:
            db = sqlite3.connect(data.folder / "analytics.db", timeout=5)
            try:
                return [r[0] for r in db.execute("SELECT request_id FROM requests ORDER BY id")]
            finally:
                db.close()

        eventually(lambda: ids <= set(written()), timeout=10)
        found = written()
        assert found[:3] == ["old0", "old1", "old2"]
        assert len(found) == len(set(found)) and len(found) >= 3 + 7
        beat = run / f"proxy-{proxy.pid}.json"
        eventually(lambda: beat.exists() and json.loads(beat.read_text())["last_error"] is None, 6)
        eventually(lambda: "heartbeat written again" in log.read_text(), timeout=2)
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            code = proxy.wait(30)
        except subprocess.TimeoutExpired:
            proxy.kill()
            raise
        upstream.stop()
    # uvicorn raises the signal again once it has shut down cleanly.
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
