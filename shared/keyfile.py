"""Changing `data/apikeys.json`: the api does it, and the `llmp` tool when an operator asks.
The embedded `shared.keystore.KeyAdmin`.

Every change is read-modify-write under an exclusive lock (a thread lock within the process and
`flock` on `apikeys.json.lock` across processes), and the write is atomic. A file that cannot be
read is an error (KeyFileError), never an empty key set that the next write would save over the
real keys. A missing or broken file with a last good copy is read from the copy (see
`shared.apikeys.load_keys`), so keys stay listed and revocable; the next change writes the file
again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from shared import files
from shared.apikeys import (
    ApiKey,
    KeyFileError,
    PolicyChange,
    last_good_path,
    load_keys,
    read_keys,
    save_last_good,
    write_keys,
)
from shared.files import Reserve
from shared.keystore import DuplicateUsername, check_unique

__all__ = ["DuplicateUsername", "KeyFile"]

log = logging.getLogger("keyfile")


class KeyFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        # space kept for writing the key file on a full disk: a key can always be revoked
        self.reserve = Reserve(path.with_name(f".{path.name}.reserve"))

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the file still: no change from this or another process meanwhile."""
        return files.locked(self.path)

    def prepare(self) -> None:
        """Keep room on the disk to write the key file: a key can always be revoked."""
        self.reserve.ensure()

    def _keys(self) -> list[ApiKey]:
        keys, problem = load_keys(self.path)
        if problem is not None:
            log.error(
                "key file unusable; using its last good copy", extra={"fields": {"error": problem}}
            )
        return keys

    def _write(self, keys: list[ApiKey]) -> None:
        """Save `keys` (the lock held). A broken file written over is kept beside it first, as
        `apikeys.json.broken`: an edit gone wrong is not lost."""
        try:
            read_keys(self.path)
        except KeyFileError:
            os.replace(self.path, self.path.with_name(self.path.name + ".broken"))
        write_keys(self.path, keys, self.reserve)
        self.reserve.ensure()

    def list(self) -> list[ApiKey]:
        return self._keys()

    def remember(self) -> bool:
        """Make the last good copy the key file as it is now, if that is valid and differs from
        the copy (a reader that found it so calls this); True if the copy was written."""
        with self.locked():
            try:
                data = self.path.read_bytes()
                read_keys(self.path)
            except (OSError, KeyFileError):
                return False  # gone or broken since: the copy stays as it is
            copy = last_good_path(self.path)
            try:
                if copy.read_bytes() == data:
                    return False
            except FileNotFoundError:
                pass
            return save_last_good(self.path, data)

    def create(self, username: str, policy: PolicyChange | None = None) -> ApiKey:
        with self.locked():
            keys = self._keys()
            key = ApiKey.new(username).updated(policy or {})
            check_unique(keys, key)
            self._write([*keys, key])
            return key

    def update(self, key_id: str, change: PolicyChange) -> ApiKey | None:
        """The key with `change` applied and saved; None if there is no key `key_id`. Raises
        DuplicateUsername if its new name is another key's of the same user."""
        return self._change(key_id, lambda key: key.updated(change), renamed="name" in change)

    def rotate(self, key_id: str, until: datetime) -> ApiKey | None:
        """Give the key a new secret; its current one is accepted until `until`. None if
        there is no key `key_id`."""
        return self._change(key_id, lambda key: key.rotated(until))

    def _change(
        self, key_id: str, change: Callable[[ApiKey], ApiKey], renamed: bool = False
    ) -> ApiKey | None:
        """Apply `change` to the key `key_id` and save. A key's name is checked against its
        user's other keys only when it changes: a file edited by hand that holds two keys of
        one name still lets either be disabled, rotated or deleted."""
        with self.locked():
            keys = self._keys()
            for position, key in enumerate(keys):
                if key.id == key_id:
                    keys[position] = changed = change(key)
                    if renamed:
                        check_unique(keys, changed)
                    self._write(keys)
                    return changed
            return None

    def delete(self, key_id: str) -> bool:
        with self.locked():
            keys = self._keys()
            kept = [k for k in keys if k.id != key_id]
            if len(kept) == len(keys):
                return False
            self._write(kept)
            return True

    def find(self, secret: str) -> ApiKey | None:
        """The key whose secret is `secret` (or a previous secret still accepted), compared in
        constant time."""
        found = None
        now = datetime.now(UTC)
        for key in self._keys():
            if key.accepts(secret, now) and found is None:
                found = key
        return found

    def by_id_or_secret(self, value: str) -> ApiKey | None:
        for key in self._keys():
            if key.id == value or key.accepts(value):
                return key
        return None
