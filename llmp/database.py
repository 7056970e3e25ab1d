"""`llmp database import` and `llmp database export`: move an install between data/ (the key file
and analytics.db) and PostgreSQL (DATABASE_URL), either way. Run them with llmp stopped.
`llmp database migrate` brings the database's tables up to date and exits (a deployment's
one-shot step before its replicas start; they would do it themselves, once, all the same).

import: the keys of data/apikeys.json and the rows of data/analytics.db go into the database.
Refused when the database holds keys already (another install's: merging two key sets is for the
operator to decide, key by key). Rows already in the database are left out (they are known by
their start and request id), so an import cut short can simply be run again.

export: the database's keys and rows go into data/ (the rows with their rollups, as the proxy
writes them). Refused when data/ holds keys or rows already.

Nothing is deleted from where it came from: the source stays as it was, until the operator
removes it.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import psycopg

from shared import analytics, files
from shared.analytics import COLUMNS, RequestRow
from shared.apikeys import load_keys, write_keys
from shared.pg.keys import PgKeyAdmin
from shared.pg.schema import migrate
from shared.pg.usage import write_rows
from shared.settings import Settings

BATCH = 5000
_FROM_PG = f"SELECT {', '.join(COLUMNS)} FROM llmp_requests ORDER BY start_ms, request_id".encode()
_FROM_SQLITE = f"SELECT id, {', '.join(COLUMNS)} FROM requests WHERE id > ? ORDER BY id LIMIT ?"
_BOOLEANS = {f.name for f in fields(RequestRow) if f.type in ("bool", bool)}


class MoveRefused(Exception):
    """The move would mix two installs, or has nowhere to go."""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "database", help="move keys and history between data/ and DATABASE_URL"
    )
    parser.add_argument("direction", choices=["import", "export", "migrate"])


def database_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.direction == "migrate":
            with psycopg.connect(_url(settings), connect_timeout=10) as conn:
                applied = migrate(conn)
            print(f"applied {applied} migrations; the database is up to date")
        elif args.direction == "import":
            keys, rows = import_embedded(settings)
            print(f"imported {keys} keys and {rows} requests into the database")
        else:
            keys, rows = export_embedded(settings)
            print(f"exported {keys} keys and {rows} requests into {settings.data_dir}")
    except MoveRefused as exc:
        print(f"llmp: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"llmp: the database: {exc}", file=sys.stderr)
        return 1
    return 0


def import_embedded(settings: Settings) -> tuple[int, int]:
    """data/ into the database: (keys, rows added)."""
    url = _url(settings)
    keys, problem = load_keys(settings.apikeys_file)
    if problem is not None:
        raise MoveRefused(f"the key file is unusable ({problem}): mend it first")
    admin = PgKeyAdmin(url)
    there = admin.list()
    if there:
        raise MoveRefused(f"the database holds {len(there)} keys already: nothing moved")
    admin.replace_all(keys)
    added = 0
    if settings.analytics_db.exists():
        days: set[int] = set()
        source = analytics.connect(settings.analytics_db)
        try:
            with psycopg.connect(url) as conn:
                migrate(conn)
                conn.commit()
                for batch in _sqlite_rows(source):
                    added += write_rows(conn, batch, days)
        finally:
            source.close()
    return len(keys), added


def export_embedded(settings: Settings) -> tuple[int, int]:
    """The database into data/: (keys, rows)."""
    url = _url(settings)
    with files.locked(settings.apikeys_file):
        here, _ = load_keys(settings.apikeys_file)
        if here:
            raise MoveRefused(f"{settings.apikeys_file} holds {len(here)} keys: nothing moved")
        target = analytics.connect(settings.analytics_db)
        try:
            if target.execute("SELECT 1 FROM requests LIMIT 1").fetchone():
                raise MoveRefused(f"{settings.analytics_db} holds rows: nothing moved")
            keys = PgKeyAdmin(url).list()
            written = 0
            with psycopg.connect(url) as conn, conn.cursor(name="llmp_export") as cursor:
                cursor.execute(_FROM_PG)
                while batch := cursor.fetchmany(BATCH):
                    analytics.insert(target, (RequestRow(*values) for values in batch))
                    written += len(batch)
            write_keys(settings.apikeys_file, keys)
        finally:
            target.close()
    return len(keys), written


def _url(settings: Settings) -> str:
    if not settings.database_url:
        raise MoveRefused("DATABASE_URL is not set: say which database to move to or from")
    return settings.database_url


def _sqlite_rows(db: sqlite3.Connection) -> Iterator[list[RequestRow]]:
    last = 0
    while True:
        found = db.execute(_FROM_SQLITE, (last, BATCH)).fetchall()
        if not found:
            return
        last = found[-1][0]
        batch = []
        for values in found:
            row = RequestRow(*values[1:])
            for name in _BOOLEANS:  # SQLite keeps them as 0 and 1
                setattr(row, name, bool(getattr(row, name)))
            batch.append(row)
        yield batch
