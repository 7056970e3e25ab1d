"""The `llmp` command against a data folder, and backups of a running stack."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import httpx
import pytest

from llmp import backup
from shared import analytics
from shared.analytics import RequestRow
from shared.apikeys import read_keys
from tests.conftest import eventually
from tests.stack.conftest import Stack


def llmp(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "env"
    env_file.write_text(f"DATA_DIR={tmp_path / 'data'}\nPROXY_WORKERS=1\n")
    return subprocess.run(
        [sys.executable, "-m", "llmp", "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_create_list_revoke(tmp_path):
    created = llmp(tmp_path, "keys", "create", "alice")
    assert created.returncode == 0
    secret = created.stdout.strip()
    assert secret.startswith("sk-") and len(secret) == 67
    assert llmp(tmp_path, "keys", "create", "alice").returncode == 1
    assert llmp(tmp_path, "keys", "create", "bad name").returncode == 2
    listed = llmp(tmp_path, "keys", "list").stdout
    assert "alice" in listed and secret not in listed  # the secret is shown once only
    assert llmp(tmp_path, "keys", "revoke", "alice").returncode == 0
    assert read_keys(tmp_path / "data" / "apikeys.json") == []
    assert llmp(tmp_path, "keys", "revoke", "alice").returncode == 1


def test_status_says_what_is_down(tmp_path):
    result = llmp(tmp_path, "status")
    assert result.returncode == 1
    assert '"status": "degraded"' in result.stdout


def test_backup_under_writes_restores_whole(tmp_path):
    data = tmp_path / "data"
    llmp(tmp_path, "keys", "create", "alice")
    prices = b'{"currency": "USD", "models": {"m": {"prompt": 1.0, "completion": 2.0}}}'
    (data / "prices.json").write_bytes(prices)  # what budgets in money count by
    fleet = b'{"version": 1, "upstreams": [{"id": "x", "url": "http://h/v1", "key": "k"}]}'
    (data / "upstreams.json").write_bytes(fleet)  # the upstreams managed at runtime
    db = analytics.connect(data / "analytics.db")
    stop = threading.Event()

    def writer() -> None:
        own = analytics.connect(data / "analytics.db")
        i = 0
        while not stop.is_set():
            analytics.insert(own, [RequestRow(f"r{i}", "k", "u", i) for _ in range(50)])
            i += 1
        own.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        target = tmp_path / "backup.tar.gz"
        assert llmp(tmp_path, "backup", str(target)).returncode == 0
    finally:
        stop.set()
        thread.join()
    with tarfile.open(target) as tar:
        names = {"apikeys.json", "analytics.db", "prices.json", "upstreams.json"}
        assert names <= set(tar.getnames())
        assert tar.getmember("upstreams.json").mode == 0o600  # it holds upstream keys
    keys = read_keys(data / "apikeys.json")
    (data / "apikeys.json").unlink()
    (data / "prices.json").unlink()
    (data / "upstreams.json").unlink()
    db.close()
    for path in data.glob("analytics.db*"):
        path.unlink()
    assert llmp(tmp_path, "restore", str(target)).returncode == 0
    assert read_keys(data / "apikeys.json") == keys
    assert (data / "prices.json").read_bytes() == prices
    assert (data / "upstreams.json").read_bytes() == fleet
    restored = sqlite3.connect(data / "analytics.db")
    assert restored.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert restored.execute("SELECT COUNT(*) FROM requests").fetchone()[0] % 50 == 0


def test_restore_refuses_foreign_entries(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        (tmp_path / "x").write_text("x")
        tar.add(tmp_path / "x", arcname="../escape")
    with pytest.raises(backup.RestoreRefused, match="unexpected entry"):
        backup.restore(evil, tmp_path / "data")
    assert not (tmp_path / "escape").exists()


def _rows_of(db: Path, key_id: str) -> int:
    if not db.exists():
        return 0
    connection = sqlite3.connect(db)
    try:
        return int(
            connection.execute(
                "SELECT COUNT(*) FROM requests WHERE key_id = ?", (key_id,)
            ).fetchone()[0]
        )
    except sqlite3.OperationalError:  # created, schema not yet
        return 0
    finally:
        connection.close()


def test_backup_of_a_running_stack_restores_to_a_working_stack(tmp_path, stack, fleet, key):
    """Taken while the stack serves requests; restored into a fresh stack that then works."""
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {key.key}"}
        ) as client:
            while not stop.is_set():
                client.post("/v1/chat/completions", json={"model": "model-a", "messages": []})

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        eventually(lambda: _rows_of(stack.data / "analytics.db", key.id))
        target = tmp_path / "live.tar.gz"
        names = backup.backup(stack.data, target)
    finally:
        stop.set()
        thread.join()
    assert "analytics.db" in names and "apikeys.json" in names
    with pytest.raises(backup.RestoreRefused, match="running"):
        backup.restore(target, stack.data)
    home = tmp_path / "restored"
    assert backup.restore(target, home / "data")
    restored = sqlite3.connect(home / "data" / "analytics.db")
    assert restored.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    restored.close()
    backed_up = _rows_of(home / "data" / "analytics.db", key.id)
    assert backed_up > 0
    second = Stack(home, [fleet["a"]]).start()
    try:
        r = httpx.post(
            second.url + "/v1/chat/completions",
            json={"model": "model-a"},
            headers={"Authorization": f"Bearer {key.key}"},
        )
        assert r.status_code == 200
        with second.admin() as admin:
            records = eventually(
                lambda: (
                    len(r := admin.get(f"/api/analytics/{key.id}").json()["records"]) > backed_up
                    and r
                )
            )
        assert len(records) == backed_up + 1
    finally:
        assert second.stop() == 0
