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
from datetime import datetime
from typing import Protocol

from shared.apikeys import ApiKey, PolicyChange


class DuplicateUsername(Exception):
    """The user already has a key of that name (or, for a key without a name, one without)."""

    def __init__(self, username: str, name: str | None = None) -> None:
        super().__init__(username, name)
        self.username, self.name = username, name

    @property
    def message(self) -> str:
        if self.name is None:
            return "API key already exists for this username"  # the original's words
        return f'An API key named "{self.name}" already exists for this username'


def check_unique(keys: list[ApiKey], key: ApiKey) -> None:
    """Raises DuplicateUsername if another of `keys` has `key`'s username and name."""
    for other in keys:
        if other.id != key.id and (other.username, other.name) == (key.username, key.name):
            raise DuplicateUsername(key.username, key.name)


class KeyAdmin(Protocol):
    def prepare(self) -> None:
        """Get ready to take changes (called once at start, off the event loop)."""

    def list(self) -> list[ApiKey]:
        """Every key, in the order they were created."""

    def create(self, username: str, policy: PolicyChange | None = None) -> ApiKey:
        """A new key for `username`. Raises DuplicateUsername."""

    def update(self, key_id: str, change: PolicyChange) -> ApiKey | None:
        """The key with `change` applied and saved; None if there is no key `key_id`. Raises
        DuplicateUsername if its new name is another key's of the same user."""

    def rotate(self, key_id: str, until: datetime) -> ApiKey | None:
        """Give the key a new secret; its current one is accepted until `until`. None if
        there is no key `key_id`."""

    def delete(self, key_id: str) -> bool:
        """False if there was no key `key_id`."""

    def find(self, secret: str) -> ApiKey | None:
        """The key whose secret is `secret` (or a previous secret still accepted), compared in
        constant time."""

    def by_id_or_secret(self, value: str) -> ApiKey | None:
        """The key whose id or secret (current or previous) is `value`."""


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

    def look_again(self) -> bool:
        """Read the store again now, where that is cheap and done on the event loop, so a key
        created a moment ago is found before the change is noticed; whether new keys came. A
        store whose changes are pushed (PostgreSQL's NOTIFY) returns False."""

    async def start(self, arrived: KeysArrived) -> None:
        """Hand the keys in force to `arrived` (before returning, if the store can be read),
        then every new set of them as it comes."""

    async def stop(self) -> None: ...
