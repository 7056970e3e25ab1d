"""The proxy's keys: the keys in force, in memory, looked up per request without a round trip.

They come from a key feed (`shared.keystore.KeyFeed`): `data/apikeys.json` by default
(`shared.keyfile_feed`), PostgreSQL with DATABASE_URL. Whatever the feed, each new set replaces
the whole index at once, and a feed that cannot reach its store leaves the last good set in
force (its error is reported in the heartbeat as `keys_error`, which /healthz shows).

Keys are looked up by their SHA-256 digest, so the time a lookup takes says nothing about how
much of a guessed key was right. Each key's policy is compiled when its set arrives. A rotated
key's previous secrets are looked up the same way, with a policy that refuses them once their
overlap has passed (`Policy.check_key`); a key's current secret wins over another's previous one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from services.proxy.limits import Policy
from shared.apikeys import ApiKey
from shared.keyfile_feed import FileKeyFeed
from shared.keystore import KeyFeed

log = logging.getLogger("proxy.keys")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    def __init__(self, source: Path | KeyFeed) -> None:
        self.feed: KeyFeed = FileKeyFeed(source) if isinstance(source, Path) else source
        self._by_digest: dict[bytes, Policy] = {}
        self._secrets: dict[str, Policy] = {}  # the same policies by secret, for revocation
        self.on_change: Callable[[], None] | None = None  # called after each new set of keys

    @property
    def last_error(self) -> str | None:
        return self.feed.last_error

    @property
    def version(self) -> int:
        return self.feed.version

    def staleness(self) -> float:
        return self.feed.staleness()

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
        """The key's policy. A key not in force sends the feed to look again once, so a key
        created a moment ago (the api answered, the file watch has not fired yet) is found."""
        digest = _digest(key)
        policy = self._by_digest.get(digest)
        if policy is None and self.feed.look_again():
            policy = self._by_digest.get(digest)
        return policy

    def use(self, keys: list[ApiKey]) -> None:
        """Put `keys` in force (the feed calls this with each new set)."""
        policies = [Policy.of(key) for key in keys]
        secrets: dict[str, Policy] = {}
        for policy in policies:
            for previous in policy.key.previousKeys:
                secrets[previous.key] = policy.previous(previous.until)
        for policy in policies:  # a current secret is never shadowed by a previous one
            secrets[policy.key.key] = policy
        self._secrets = secrets
        self._by_digest = {_digest(secret): policy for secret, policy in secrets.items()}
        log.info(
            "keys loaded", extra={"fields": {"count": len(keys), "version": self.feed.version}}
        )
        if self.on_change is not None:
            self.on_change()

    async def start(self) -> None:
        await self.feed.start(self.use)

    async def stop(self) -> None:
        await self.feed.stop()
