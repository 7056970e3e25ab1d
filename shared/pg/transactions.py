"""Short transactions on a connection of their own, for work that is rare and holds no connection
between calls: an admin's key changes (`shared.pg.keys`), certd's certificates
(`services.certd.pgshare`).

The first transaction that connects brings the schema up to date (`shared.pg.schema.migrate`),
once for the life of the `Transactions`; a migration that fails is tried again by the next one.
Every psycopg error, connecting included, leaves as its owner's error, chained, its message
naming the database it was about.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from shared.pg.schema import migrate

CONNECT_TIMEOUT = 5  # seconds


class Transactions:
    def __init__(self, url: str, application_name: str, error: type[Exception], what: str) -> None:
        """`error(f"{what}: {exc}")` is raised for each psycopg error `exc`."""
        self.url = url
        self.application_name = application_name
        self._error = error
        self._what = what
        self._migrated = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction, the schema up to date; errors made the owner's."""
        try:
            with psycopg.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT,
                application_name=self.application_name,
            ) as conn:
                if not self._migrated:
                    migrate(conn)
                    self._migrated = True
                with conn.transaction():
                    yield conn
        except psycopg.Error as exc:
            raise self._error(f"{self._what}: {exc}") from exc
