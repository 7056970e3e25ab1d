"""The key store's two sides, as every implementation offers them.

- `KeyAdmin`: what the api and the `llmp` command do to keys (list, create, update, delete, find
  by secret). Changes are read-modify-write under one lock, so two writers never lose each
  other's change. A store that cannot be read raises `KeyFileError`, never returns no keys.
- `KeyFeed`: what a proxy worker serves from. The keys in force arrive in memory, every new set
  handed to one callback on the worker's event loop; a request never waits for the store. Each
  set has a `version` (higher is newer); `staleness()` says how long ago the view was last known
  to match the store; `last_error` says why it may not (the store unreadable or unreachable: the
  last good keys stay in force meanwhile).

The embedded implementation is `data/apikeys.json` (`shared.keyfile.KeyFile`,
`shared.keyfile_feed.FileKeyFeed`); with DATABASE_URL, PostgreSQL (`shared.pg.keys`).
`shared.storage` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from shared.apikeys import ApiKey, PolicyChange


class DuplicateUsername(Exception):
    """A key for this username exists already."""


class KeyAdmin(Protocol):
    def prepare(self) -> None:
        """Get ready to take changes (called once at start, off the event loop)."""

    def list(self) -> list[ApiKey]:
        """Every key, in the order they were created."""

    def create(self, username: str, policy: PolicyChange | None = None) -> ApiKey:
        """A new key for `username`. Raises DuplicateUsername."""

    def update(self, key_id: str, change: PolicyChange) -> ApiKey | None:
        """The key with `change` applied and saved; None if there is no key `key_id`."""

    def delete(self, key_id: str) -> bool:
        """False if there was no key `key_id`."""

    def find(self, secret: str) -> ApiKey | None:
        """The key whose secret is `secret`, compared in constant time."""

    def by_id_or_secret(self, value: str) -> ApiKey | None:
        """The key whose id or secret is `value`."""


KeysArrived = Callable[[list[ApiKey]], None]


class KeyFeed(Protocol):
    @property
    def last_error(self) -> str | None:
        """Why the view may be out of date (None while it is current)."""

    @property
    def version(self) -> int:
        """The version of the keys handed over last (0 before any)."""

    def staleness(self) -> float:
        """Seconds since the view was last known to match the store."""

    async def start(self, arrived: KeysArrived) -> None:
        """Hand the keys in force to `arrived` (before returning, if the store can be read),
        then every new set of them as it comes."""

    async def stop(self) -> None: ...
