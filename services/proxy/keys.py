"""The proxy's view of `data/apikeys.json`, kept current within a second.

Changes arrive through watchdog (inotify) and, as a safety net where inotify does not reach
(some bind mounts), a cheap `stat()` poll. A file that goes missing or stops parsing leaves the
last good keys in force; the error is logged and reported in the heartbeat.

Keys are looked up by their SHA-256 digest, so the time a lookup takes says nothing about how
much of a guessed key was right. Each key's policy is compiled when the file is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from services.proxy.limits import Policy
from shared.apikeys import ApiKey, KeyFileError, read_keys

log = logging.getLogger("proxy.keys")

POLL_INTERVAL = 0.5


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_error: str | None = None
        self._by_digest: dict[bytes, Policy] = {}
        self._signature: tuple[int, int, int] | None = None
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._poller: asyncio.Task[None] | None = None
        self.on_change: Callable[[], None] | None = None  # called after each new set of keys

    def __len__(self) -> int:
        return len(self._by_digest)

    def keys(self) -> list[ApiKey]:
        return [policy.key for policy in self._by_digest.values()]

    def usable(self) -> list[str]:
        """The keys (secrets) that are present and enabled."""
        return [p.key.key for p in self._by_digest.values() if p.key.enabled]

    def lookup(self, key: str) -> Policy | None:
        return self._by_digest.get(_digest(key))

    def reload(self) -> None:
        """Re-read the file if it changed since the last look."""
        try:
            st = os.stat(self.path)
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature and self._signature is not None:
            return
        self._signature = signature
        if signature is None:
            self._fail(f"{self.path} is missing")
            return
        try:
            keys = read_keys(self.path)
        except KeyFileError as exc:
            self._fail(str(exc))
            return
        self._by_digest = {_digest(k.key): Policy.of(k) for k in keys}
        self.last_error = None
        log.info("keys loaded", extra={"fields": {"count": len(keys)}})
        if self.on_change is not None:
            self.on_change()

    def _fail(self, error: str) -> None:
        if error != self.last_error:
            log.error(
                "keeping the last good keys",
                extra={"fields": {"error": error, "count": len(self._by_digest)}},
            )
        self.last_error = error

    async def start(self) -> None:
        self.reload()
        loop = asyncio.get_running_loop()
        store = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = (event.src_path, getattr(event, "dest_path", ""))
                if any(os.fsdecode(p).endswith(store.path.name) for p in paths if p):
                    loop.call_soon_threadsafe(store.reload)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.daemon = True
        observer.schedule(Handler(), str(self.path.parent), recursive=False)
        observer.start()
        self._observer = observer
        self._poller = asyncio.create_task(self._poll(), name="keys-poll")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.reload()

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join, 5)
