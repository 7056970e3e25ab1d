"""The proxy's view of `data/apikeys.json`, kept current within a second.

Changes arrive as services/proxy/watch.py notices them (inotify, and a `stat()` poll). A file
that goes missing or stops parsing leaves the last good keys in force: those of
`apikeys.json.last-good` (the newest valid key file, so a worker started meanwhile serves the
same keys as the others), else those in memory. The error is logged and reported in the
heartbeat (`keys_error`, which /healthz shows). A valid file that differs from the last good
copy is copied there.

Keys are looked up by their SHA-256 digest, so the time a lookup takes says nothing about how
much of a guessed key was right. Each key's policy is compiled when the file is read. A rotated
key's previous secrets are looked up the same way, with a policy that refuses them once their
overlap has passed (`Policy.check_key`); a key's current secret wins over another's previous one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from services.proxy.limits import Policy
from services.proxy.watch import FileWatch, signature
from shared.apikeys import ApiKey, KeyFileError, last_good_path, read_keys
from shared.keyfile import KeyFile

log = logging.getLogger("proxy.keys")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_error: str | None = None
        self._by_digest: dict[bytes, Policy] = {}
        self._secrets: dict[str, Policy] = {}  # the same policies by secret, for revocation
        self._signature: tuple[int, int, int] | None = (-1, -1, -1)  # never read
        self._copy_signature: tuple[int, int, int] | None = None
        self._watch = FileWatch(path, self.reload, "keys-poll")
        self.on_change: Callable[[], None] | None = None  # called after each new set of keys
        self._remembering: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[ApiKey]:
        return [policy.key for policy in self._by_digest.values() if policy.retired is None]

    def usable(self) -> list[str]:
        """The keys (secrets) that are present and enabled, previous ones still accepted too."""
        now = time.time()
        return [
            p.key.key if p.retired is None else secret
            for secret, p in self._secrets.items()
            if p.key.enabled and (p.retired is None or p.retired > now)
        ]

    def lookup(self, key: str) -> Policy | None:
        return self._by_digest.get(_digest(key))

    def reload(self) -> None:
        """Re-read the file if it changed since the last look."""
        now = signature(self.path)
        if now == self._signature and (now is not None or self.last_error is None):
            return
        self._signature = now
        if now is None:
            if last_good_path(self.path).exists() or self._by_digest:
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
        self._copy_signature = None
        self._remember()

    def _use(self, keys: list[ApiKey]) -> None:
        policies = [Policy.of(key) for key in keys]
        secrets: dict[str, Policy] = {}
        for policy in policies:
            for previous in policy.key.previousKeys:
                secrets[previous.key] = policy.previous(previous.until)
        for policy in policies:  # a current secret is never shadowed by a previous one
            secrets[policy.key.key] = policy
        self._secrets = secrets
        self._by_digest = {_digest(secret): policy for secret, policy in secrets.items()}
        log.info("keys loaded", extra={"fields": {"count": len(keys)}})
        if self.on_change is not None:
            self.on_change()

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
                "key file unusable; serving the last good keys",
                extra={"fields": {"error": error, "count": len(self._by_digest)}},
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

    async def start(self) -> None:
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
