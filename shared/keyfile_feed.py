"""`data/apikeys.json` as a proxy worker's key feed (`shared.keystore.KeyFeed`), current within a
second.

Changes arrive as shared/watch.py notices them (inotify, and a `stat()` poll), or sooner when a
lookup misses (`look_again`: a key the api has just created works at once). A file that goes
missing or stops parsing leaves the last good keys in force: those of `apikeys.json.last-good`
(the newest valid key file, so a worker started meanwhile serves the same keys as the others),
else those in memory. The error is logged and kept in `last_error` (the proxy's heartbeat reports
it, /healthz shows it). A valid file that differs from the last good copy is copied there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from shared.apikeys import ApiKey, KeyFileError, last_good_path, read_keys
from shared.keyfile import KeyFile
from shared.keystore import KeysArrived
from shared.watch import FileWatch, signature

log = logging.getLogger("proxy.keys")


class FileKeyFeed:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_error: str | None = None
        self.version = 0
        self._confirmed = time.monotonic()
        self._arrived: KeysArrived | None = None
        self._have_keys = False
        self._signature: tuple[int, int, int] | None = (-1, -1, -1)  # never read
        self._copy_signature: tuple[int, int, int] | None = None
        self._watch = FileWatch(path, self.reload, "keys-poll")
        self._remembering: asyncio.Future[None] | None = None

    def staleness(self) -> float:
        return time.monotonic() - self._confirmed if self.last_error else 0.0

    def look_again(self) -> bool:
        """One `stat()`; the file is read only if it changed since the last look."""
        version = self.version
        self.reload()
        return self.version != version

    def reload(self) -> None:
        """Re-read the file if it changed since the last look."""
        now = signature(self.path)
        if now == self._signature and (now is not None or self.last_error is None):
            if self.last_error is None:
                self._confirmed = time.monotonic()
            return
        self._signature = now
        if now is None:
            if last_good_path(self.path).exists() or self._have_keys:
                self._fall_back(f"{self.path} is missing")
            return  # no file and no copy: a new install, no keys yet
        try:
            keys = read_keys(self.path)
        except KeyFileError as exc:
            self._fall_back(str(exc))
            return
        self._use(keys)
        if self.last_error is not None:
            log.info("key file readable again")
        self.last_error = None
        self._confirmed = time.monotonic()
        self._copy_signature = None
        self._remember()

    def _use(self, keys: list[ApiKey]) -> None:
        self.version += 1
        self._have_keys = bool(keys)
        if self._arrived is not None:
            self._arrived(keys)

    def _fall_back(self, error: str) -> None:
        """Serve the last good copy's keys (if it changed since last read), else keep ours."""
        copy = last_good_path(self.path)
        copied = signature(copy)
        if copied is not None and copied != self._copy_signature:
            try:
                self._use(read_keys(copy))
                self._copy_signature = copied
            except KeyFileError as exc:
                error += f"; the last good copy too: {exc}"
        if error != self.last_error:
            log.error(
                "key file unusable; serving the last good keys", extra={"fields": {"error": error}}
            )
        self.last_error = error

    def _remember(self) -> None:
        """Update the last good copy from the file, off the event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            _remember(self.path)
        elif self._remembering is None or self._remembering.done():
            self._remembering = loop.run_in_executor(None, _remember, self.path)

    async def start(self, arrived: KeysArrived) -> None:
        self._arrived = arrived
        self.reload()
        await self._watch.start()

    async def stop(self) -> None:
        await self._watch.stop()
        if self._remembering is not None:
            await asyncio.wait([self._remembering], timeout=5)


def _remember(path: Path) -> None:
    try:
        KeyFile(path).remember()
    except OSError as exc:  # a full or read-only disk: the copy stays as it was
        log.warning("last good key file not updated", extra={"fields": {"error": exc}})
