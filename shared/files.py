"""Atomic file writes: the only way any llmp program writes a file in data/.

A reader sees either the old file or the new one, never a half-written one: the bytes go to a
temporary file in the same folder, are flushed to disk, and replace the target in one rename.

A `Reserve` is space set aside in a folder for the writes that must succeed on a full disk
(revoking a key): a file of zeros whose blocks a write can take over in place, or give back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("files")

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
RESERVE_SIZE = 1024 * 1024
STALE_AFTER = 60.0  # seconds: a temporary file older than this is no writer's any more


_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold `path` still while its reader-writers change it: an exclusive flock on `<path>.lock`,
    for other processes, and a lock per path for this process's threads (flock is per open
    file, so two threads of one process would not exclude each other through it)."""
    with _locks_guard:
        lock = _locks.setdefault(path.absolute(), threading.Lock())
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`; the new file gets `mode` (0600 by default: secrets).

    Temporary files of `path` that a writer killed midway left behind (they may hold a whole
    key set, revoked keys included) are removed first, once STALE_AFTER old (a younger one may
    be another writer's, still at work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _remove_stale(path: Path) -> None:
    cutoff = time.time() - STALE_AFTER
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if tmp.lstat().st_mtime < cutoff and stat.S_ISREG(tmp.lstat().st_mode):
                tmp.unlink()
                log.warning("stale temporary file removed", extra={"fields": {"path": str(tmp)}})


def write_json_atomic(path: Path, value: Any, mode: int = 0o600) -> None:
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode(), mode)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Reserve:
    """RESERVE_SIZE bytes held back at `path` for `write` when the disk is full.

    The write goes into the reserve's own blocks (written in place, truncated to size, then
    renamed over the target): no new block is needed on ext4, xfs or tmpfs. Where that fails
    too (a copy-on-write filesystem), the reserve is deleted to give its space back and the
    write is tried once more the usual way. `ensure` makes a new reserve once there is room.
    """

    def __init__(self, path: Path, size: int = RESERVE_SIZE) -> None:
        self.path = path
        self.size = size

    def ensure(self) -> bool:
        """Create the reserve if it is missing (best effort); True if it is in place."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size >= self.size:
                return True
        tmp = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                block = bytes(64 * 1024)
                for _ in range(0, self.size, len(block)):
                    os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno not in NO_SPACE:
                log.warning("no disk space reserve", extra={"fields": {"error": exc}})
            return False
        return True

    def write(self, path: Path, data: bytes, mode: int = 0o600) -> None:
        """As `write_atomic`, and on a full disk through the reserve."""
        try:
            write_atomic(path, data, mode)
            return
        except OSError as exc:
            if exc.errno not in NO_SPACE or not self.path.exists():
                raise
            log.warning(
                "disk full: writing through the space reserve",
                extra={"fields": {"path": str(path)}},
            )
        try:
            self._write_in_place(path, data, mode)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # give its space back
            write_atomic(path, data, mode)

    def _write_in_place(self, path: Path, data: bytes, mode: int) -> None:
        if len(data) > self.size:
            raise OSError(errno.ENOSPC, "larger than the reserve")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.path, path)
        _fsync_dir(path.parent)
