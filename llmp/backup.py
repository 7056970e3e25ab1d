"""`llmp backup` and `llmp restore`: a consistent copy of `data/`, taken while llmp runs.

A backup is a gzipped tar of: `analytics.db` (through SQLite's online backup, so rows written
meanwhile never tear it), `apikeys.json` (read under the key file's lock), `upstreams.json`
(under its own), `site.json`,
`prices.json` (what budgets in money count by), `certd/status.json` and the original
llm-proxy's `analytics/*.csv` if any. Heartbeats are not kept. Restoring needs the stack
stopped, and puts every file in place atomically.
"""

from __future__ import annotations

import io
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path

from shared import files
from shared.files import write_atomic
from shared.heartbeat import read_heartbeats
from shared.keyfile import KeyFile

PLAIN_FILES = ("site.json", "prices.json", "certd/status.json")
SECRET_FILES = frozenset({"apikeys.json", "upstreams.json", "analytics.db"})


class RestoreRefused(Exception):
    pass


def backup(data_dir: Path, target: Path) -> list[str]:
    """Write a backup of `data_dir` to `target` (atomically); returns the names it holds."""
    members: dict[str, bytes] = {}
    with KeyFile(data_dir / "apikeys.json").locked():
        keys = data_dir / "apikeys.json"
        if keys.exists():
            members["apikeys.json"] = keys.read_bytes()
    fleet = data_dir / "upstreams.json"
    with files.locked(fleet):  # the api changes it under this lock (shared/fleet.py)
        if fleet.exists():
            members["upstreams.json"] = fleet.read_bytes()
    if (data_dir / "analytics.db").exists():
        members["analytics.db"] = _sqlite_snapshot(data_dir / "analytics.db")
    for name in PLAIN_FILES:
        if (data_dir / name).exists():
            members[name] = (data_dir / name).read_bytes()
    for csv in sorted((data_dir / "analytics").glob("*.csv")):
        members[f"analytics/{csv.name}"] = csv.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), int(time.time())
            info.mode = 0o600 if name in SECRET_FILES else 0o644
            tar.addfile(info, io.BytesIO(content))
    write_atomic(target, buffer.getvalue(), mode=0o600)
    return list(members)


def _sqlite_snapshot(path: Path) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "copy.db"
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        destination = sqlite3.connect(copy)
        try:
            source.backup(destination)
        finally:
            destination.close()
            source.close()
        return copy.read_bytes()


def restore(source: Path, data_dir: Path) -> list[str]:
    """Put the files of a backup into `data_dir`; refuses while any llmp program runs."""
    running = sorted({b["program"] for b in read_heartbeats(data_dir / "run") if b["alive"]})
    if running:
        raise RestoreRefused(f"llmp is running ({', '.join(running)}); stop it first")
    restored = []
    with tarfile.open(source, mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            allowed = (
                name in SECRET_FILES
                or name in PLAIN_FILES
                or (
                    name.startswith("analytics/") and name.endswith(".csv") and name.count("/") == 1
                )
            )
            if not member.isfile() or not allowed:
                raise RestoreRefused(f"unexpected entry in the backup: {name!r}")
            content = tar.extractfile(member)
            assert content is not None
            target = data_dir / name
            for stale in (
                target.with_name(target.name + "-wal"),
                target.with_name(target.name + "-shm"),
            ):
                stale.unlink(missing_ok=True)
            write_atomic(target, content.read(), mode=0o600 if name in SECRET_FILES else 0o644)
            restored.append(name)
    return restored
