"""`data/analytics.db`: one row per request through the proxy (SQLite, WAL mode).

The proxy workers write (in small batches, off the hot path); the api reads. `end_ms` is NULL
when the request failed, as the original's CSV wrote `null`: any answer other than 2xx/3xx, and
any request that did not complete (upstream unreachable or cut, client gone). `status`, `error`
and `ttfb_ms` say what happened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path


@dataclass(slots=True)
class RequestRow:
    request_id: str
    key_id: str
    username: str
    start_ms: int
    end_ms: int | None = None
    status: int = 0
    method: str = ""
    path: str = ""
    model: str | None = None
    upstream: str | None = None
    stream: bool = False
    ttfb_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None


COLUMNS = tuple(f.name for f in fields(RequestRow))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    username TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER,
    status INTEGER NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    model TEXT,
    upstream TEXT,
    stream INTEGER NOT NULL,
    ttfb_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS requests_key_start ON requests (key_id, start_ms);
CREATE INDEX IF NOT EXISTS requests_start ON requests (start_ms);
"""

_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def connect(path: Path) -> sqlite3.Connection:
    """Open the database, creating it (mode 0600) and its schema if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


def insert(db: sqlite3.Connection, rows: Iterable[RequestRow]) -> None:
    """Insert rows in one transaction."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, (astuple(row) for row in rows))
