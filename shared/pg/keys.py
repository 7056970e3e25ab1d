"""The keys in PostgreSQL: `PgKeyAdmin` for the api and the `llmp` command, `PgKeyFeed` for each
proxy worker (see `shared.keystore` for what each promises, `shared.pg.schema` for the tables).

Changes take a transaction-scoped advisory lock, the database's counterpart of the key file's
lock: two replicas creating a key for one username cannot both succeed. A database that cannot
be reached or answers with an error is `KeyStoreUnavailable` (a `KeyFileError`, which the api
already answers as a store it cannot read).

A feed holds one connection that LISTENs on `llmp_keys`: each change's NOTIFY (sent at commit,
with the new version) makes it load the whole set again, in one snapshot with its version. Every
CHECK_INTERVAL seconds without a notification it compares versions, in case one was missed.
When the connection breaks (the database restarted, the backend was terminated), it connects
again at once, then backs off up to MAX_BACKOFF, loading the whole set on each new connection.
Meanwhile the last set loaded stays in force, `last_error` says why, and `staleness()` grows.
A worker started while the database is away serves the replica's last good copy
(`shared.pg.snapshot`), which every worker refreshes when it loads a newer version. A request
never waits for the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.apikeys import ApiKey, KeyFileError, PolicyChange
from shared.keystore import KeysArrived, check_unique
from shared.pg import snapshot
from shared.pg.schema import KEYS_CHANNEL, LOCK_KEYS
from shared.pg.transactions import Transactions

log = logging.getLogger("keys.pg")

CONNECT_TIMEOUT = 5  # seconds
CHECK_INTERVAL = 2.0
MAX_BACKOFF = 5.0
FEED_NAME = "llmp-keys-feed"  # application_name of the feeds' connections


class KeyStoreUnavailable(KeyFileError):
    """The database cannot be reached, or failed the query."""


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class PgKeyAdmin:
    def __init__(self, url: str) -> None:
        self.url = url
        self._transaction = Transactions(
            url, "llmp-keys-admin", KeyStoreUnavailable, "key database"
        )

    def prepare(self) -> None:
        with self._transaction():
            pass

    def list(self) -> list[ApiKey]:
        with self._transaction() as conn:
            return keys_in(conn)

    def create(self, username: str, policy: PolicyChange | None = None) -> ApiKey:
        key = ApiKey.new(username).updated(policy or {})
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEYS,))
            check_unique(_users_keys(conn, username), key)
            conn.execute(
                "INSERT INTO llmp_keys (id, username, digest, doc) VALUES (%s, %s, %s, %s)",
                (key.id, key.username, digest(key.key), Jsonb(key.to_json())),
            )
        return key

    def update(self, key_id: str, change: PolicyChange) -> ApiKey | None:
        return self._change(key_id, lambda key: key.updated(change), renamed="name" in change)

    def rotate(self, key_id: str, until: datetime) -> ApiKey | None:
        return self._change(key_id, lambda key: key.rotated(until))

    def _change(
        self, key_id: str, change: Callable[[ApiKey], ApiKey], renamed: bool = False
    ) -> ApiKey | None:
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEYS,))
            row = conn.execute("SELECT doc FROM llmp_keys WHERE id = %s", (key_id,)).fetchone()
            if row is None:
                return None
            changed = change(_keys([row])[0])
            if renamed:
                check_unique(_users_keys(conn, changed.username), changed)
            conn.execute(
                "UPDATE llmp_keys SET doc = %s, digest = %s WHERE id = %s",
                (Jsonb(changed.to_json()), digest(changed.key), key_id),
            )
        return changed

    def delete(self, key_id: str) -> bool:
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEYS,))
            gone = conn.execute("DELETE FROM llmp_keys WHERE id = %s RETURNING 1", (key_id,))
            return gone.fetchone() is not None

    def find(self, secret: str) -> ApiKey | None:
        now = datetime.now(UTC)
        with self._transaction() as conn:
            holding = _holding(conn, secret)
        return next((k for k in holding if k.accepts(secret, now)), None)

    def by_id_or_secret(self, value: str) -> ApiKey | None:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT doc FROM llmp_keys WHERE id = %s ORDER BY position LIMIT 1", (value,)
            ).fetchone()
            holding = [] if row is not None else _holding(conn, value)
        if row is not None:
            return _keys([row])[0]
        return next((k for k in holding if k.accepts(value)), None)

    def replace_all(self, keys: Sequence[ApiKey]) -> None:
        """Make `keys` the whole key set, in one transaction (moving an install in)."""
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEYS,))
            conn.execute("DELETE FROM llmp_keys")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO llmp_keys (id, username, digest, doc) VALUES (%s, %s, %s, %s)",
                    [(k.id, k.username, digest(k.key), Jsonb(k.to_json())) for k in keys],
                )


def _holding(conn: psycopg.Connection[Any], secret: str) -> list[ApiKey]:
    """The key whose current secret has `secret`'s digest, then every key with previous secrets
    (few: a rotation's overlap is short), for `ApiKey.accepts` to compare."""
    rows = conn.execute(
        "SELECT doc FROM llmp_keys WHERE digest = %s OR doc ? 'previousKeys'"
        " ORDER BY digest = %s DESC, position",
        (digest(secret), digest(secret)),
    ).fetchall()
    return _keys(rows)


def _users_keys(conn: psycopg.Connection[Any], username: str) -> list[ApiKey]:
    rows = conn.execute("SELECT doc FROM llmp_keys WHERE username = %s", (username,)).fetchall()
    return _keys(rows)


def keys_in(conn: psycopg.Connection[Any]) -> list[ApiKey]:
    """The key set, read through `conn` (in its transaction, if any)."""
    return _keys(conn.execute("SELECT doc FROM llmp_keys ORDER BY position").fetchall())


def _keys(rows: list[tuple[Any, ...]]) -> list[ApiKey]:
    """The keys of `(doc,)` rows. Raises KeyStoreUnavailable naming a row that is not a key (an
    edit by hand gone wrong): never a key set with that key silently missing."""
    keys = []
    for (doc,) in rows:
        try:
            keys.append(ApiKey.from_json(doc))
        except ValueError as exc:
            name = doc.get("id") if isinstance(doc, dict) else None
            raise KeyStoreUnavailable(f"key {name!r} in the database: {exc}") from None
    return keys


class PgKeyFeed:
    def __init__(
        self, url: str, copy: Path | None = None, check_interval: float = CHECK_INTERVAL
    ) -> None:
        self.url = url
        self.copy = copy  # the replica's last good copy (shared.pg.snapshot), if it keeps one
        self.check_interval = check_interval
        self.last_error: str | None = None
        self.version = 0
        self._confirmed = time.monotonic()
        self._arrived: KeysArrived | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def staleness(self) -> float:
        return 0.0 if self.last_error is None else time.monotonic() - self._confirmed

    def look_again(self) -> bool:
        return False  # changes come by NOTIFY, within a round trip of their commit

    async def start(self, arrived: KeysArrived) -> None:
        self._arrived = arrived
        try:
            await asyncio.to_thread(PgKeyAdmin(self.url).prepare)  # the tables, if new
            await self._connect()
        except (psycopg.Error, KeyStoreUnavailable) as exc:
            await self._lost(exc)
            await self._from_copy()
        self._task = asyncio.create_task(self._run(), name="keys-listen")

    async def _from_copy(self) -> None:
        """Serve the replica's last good copy, if there is one, until the database is back."""
        if self.copy is None:
            return
        try:
            version, keys = await asyncio.to_thread(snapshot.load, self.copy)
        except KeyFileError as exc:
            log.error("no copy of the keys to serve", extra={"fields": {"error": str(exc)}})
            return
        age = max(0.0, time.time() - self.copy.stat().st_mtime)
        self._confirmed = time.monotonic() - age
        self.version = version
        log.warning(
            "serving the last good copy of the keys", extra={"fields": {"version": version}}
        )
        if self._arrived is not None:
            self._arrived(keys)

    async def _keep(self, version: int, keys: list[ApiKey]) -> None:
        if self.copy is None:
            return
        try:
            await asyncio.to_thread(snapshot.save, self.copy, version, keys)
        except OSError as exc:  # a full or read-only disk: the copy stays as it was
            log.warning("copy of the keys not written", extra={"fields": {"error": exc}})

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=FEED_NAME,
        )
        self._conn = conn
        await conn.execute(f"LISTEN {KEYS_CHANNEL}")
        await self._load()  # whatever changed while we were not listening

    async def _load(self) -> None:
        conn = self._conn
        assert conn is not None
        async with conn.transaction():
            # One snapshot: the version goes with the keys read.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = await (await conn.execute("SELECT version FROM llmp_keys_version")).fetchone()
            docs = await (
                await conn.execute("SELECT doc FROM llmp_keys ORDER BY position")
            ).fetchall()
        version = int(row[0]) if row else 0
        if version != self.version or self.last_error is not None:
            keys = _keys(docs)
            self.version = version
            if self._arrived is not None:
                self._arrived(keys)
            await self._keep(version, keys)
        self._confirmed = time.monotonic()
        if self.last_error is not None:
            log.info("key database reachable again", extra={"fields": {"version": version}})
            self.last_error = None

    async def _check(self) -> None:
        """Load the keys if the database's version is not ours (a notification missed)."""
        assert self._conn is not None
        cur = await self._conn.execute("SELECT version FROM llmp_keys_version")
        row = await cur.fetchone()
        if row is None or int(row[0]) != self.version:
            await self._load()
        else:
            self._confirmed = time.monotonic()

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            try:
                if self._conn is None:
                    await self._connect()
                backoff = 0.0
                assert self._conn is not None
                heard = None
                async for notice in self._conn.notifies(timeout=self.check_interval, stop_after=1):
                    heard = notice
                if heard is None:
                    await self._check()
                elif not heard.payload.isdigit() or int(heard.payload) > self.version:
                    await self._load()
            except (psycopg.Error, KeyStoreUnavailable) as exc:
                await self._lost(exc)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, max(0.1, backoff * 2))

    async def _lost(self, exc: Exception) -> None:
        """Keep the last keys; say why; drop the connection (the next loop connects again)."""
        error = str(exc) if isinstance(exc, KeyStoreUnavailable) else f"key database: {exc}"
        if error != self.last_error:
            log.error(
                "key database unusable; serving the last keys loaded",
                extra={"fields": {"error": error, "version": self.version}},
            )
        self.last_error = error
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None
