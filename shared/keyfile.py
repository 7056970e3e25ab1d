"""Changing `data/apikeys.json`: the api does it, and the `llmp` tool when an operator asks.

Every change is read-modify-write under an exclusive lock (a thread lock within the process and
`flock` on `apikeys.json.lock` across processes), and the write is atomic. A file that cannot be
read is an error (KeyFileError), never an empty key set that the next write would save over the
real keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from shared.apikeys import ApiKey, PolicyChange, read_keys, write_keys


class DuplicateUsername(Exception):
    pass


class KeyFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file still: no change from this or another process meanwhile."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(
                self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def list(self) -> list[ApiKey]:
        return read_keys(self.path)

    def create(self, username: str, policy: PolicyChange | None = None) -> ApiKey:
        with self.locked():
            keys = read_keys(self.path)
            if any(k.username == username for k in keys):
                raise DuplicateUsername(username)
            key = ApiKey.new(username).updated(policy or {})
            write_keys(self.path, [*keys, key])
            return key

    def update(self, key_id: str, change: PolicyChange) -> ApiKey | None:
        """The key with `change` applied and saved; None if there is no key `key_id`."""
        with self.locked():
            keys = read_keys(self.path)
            for position, key in enumerate(keys):
                if key.id == key_id:
                    keys[position] = updated = key.updated(change)
                    write_keys(self.path, keys)
                    return updated
            return None

    def delete(self, key_id: str) -> bool:
        with self.locked():
            keys = read_keys(self.path)
            kept = [k for k in keys if k.id != key_id]
            if len(kept) == len(keys):
                return False
            write_keys(self.path, kept)
            return True

    def find(self, secret: str) -> ApiKey | None:
        """The key whose secret is `secret`, compared in constant time."""
        found = None
        for key in read_keys(self.path):
            if hmac.compare_digest(key.key.encode(), secret.encode()):
                found = key
        return found

    def by_id_or_secret(self, value: str) -> ApiKey | None:
        for key in read_keys(self.path):
            if key.id == value or hmac.compare_digest(key.key.encode(), value.encode()):
                return key
        return None
