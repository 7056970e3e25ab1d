"""`data/analytics.db`: one row per request through the proxy (SQLite, WAL mode).

The proxy workers write (in small batches, off the hot path); the api reads. `end_ms` is NULL
when the request failed, as the original's CSV wrote `null`: any answer other than 2xx/3xx, and
any request that did not complete (upstream unreachable or cut, client gone). `status`, `error`
and `ttfb_ms` say what happened.
"""

from __future__ import annotations

import csv
import hashlib
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path

from shared import rollup_batch, rollups


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
    queue_ms: float | None = None
    usage_estimated: bool = False
    end_user: str | None = None  # the OpenAI `user` field of the request
    # The model name the upstream was asked for: `model` itself, or what the alias `model`
    # stood for (shared/fleet.py).
    upstream_model: str | None = None


COLUMNS = tuple(f.name for f in fields(RequestRow))
# A row's values in column order: 80 times faster than dataclasses.astuple, whose copying held
# the GIL (and so the proxy's event loop) for milliseconds per batch.
_values = attrgetter(*COLUMNS)

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
    error TEXT,
    queue_ms REAL,
    usage_estimated INTEGER NOT NULL DEFAULT 0,
    end_user TEXT,
    upstream_model TEXT
);
CREATE INDEX IF NOT EXISTS requests_key_start ON requests (key_id, start_ms);
CREATE INDEX IF NOT EXISTS requests_start ON requests (start_ms);
"""

# The request log's orders (services/api/request_log.py): the SQL of each one's value, never NULL
# (a row without the measure sorts below every value). Ties are broken by the start, then the id.
SORT_KEYS = {
    "time": "start_ms",
    "latency": "COALESCE(end_ms - start_ms, -1)",
    "ttfb": "COALESCE(ttfb_ms, -1)",
    "tokens": "COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)",
    "status": "status",
}

# Indexes of the request log, made after the migrations: a request by the id its client saw, by
# model, the failures (a few percent of the rows) on their own, and one per order but time (its
# value, then the start: a page reads the window's rows in order from the index alone).
_LOG_INDEXES = """
CREATE INDEX IF NOT EXISTS requests_request_id ON requests (request_id);
CREATE INDEX IF NOT EXISTS requests_model_start ON requests (model, start_ms);
CREATE INDEX IF NOT EXISTS requests_failed_start ON requests (start_ms) WHERE end_ms IS NULL;
""" + "".join(
    f"CREATE INDEX IF NOT EXISTS requests_{name}_start ON requests ({sql}, start_ms);\n"
    for name, sql in SORT_KEYS.items()
    if name != "time"
)

_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def connect(path: Path) -> sqlite3.Connection:
    """Open the database, creating it (mode 0600) and its schema if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    _migrate(db)
    with db:
        db.execute("BEGIN IMMEDIATE")
        for statement in _LOG_INDEXES.split(";"):
            if statement.strip():
                db.execute(statement)
        rollups.create(db)
    return db


# Columns added after the first release: (name, declaration). A database from an older llmp gets
# them on open; the rows it already holds read as NULL / the default.
_ADDED_COLUMNS = (
    ("queue_ms", "REAL"),
    ("usage_estimated", "INTEGER NOT NULL DEFAULT 0"),
    ("end_user", "TEXT"),
    ("upstream_model", "TEXT"),
)


def _migrate(db: sqlite3.Connection) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for name, declaration in _ADDED_COLUMNS:
        if name not in have:
            try:
                db.execute(f"ALTER TABLE requests ADD COLUMN {name} {declaration}")
            except sqlite3.OperationalError as exc:  # another worker added it first
                if "duplicate column" not in str(exc):
                    raise


def insert(db: sqlite3.Connection, rows: Iterable[RequestRow]) -> None:
    """Insert rows and add them to the rollups, in one transaction."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        _insert(db, rows)


def _insert(db: sqlite3.Connection, rows: Iterable[RequestRow]) -> None:
    """Inside a write transaction: the rows and their sums in the rollups, summed in memory
    (shared/rollup_batch.py)."""
    batch = rows if isinstance(rows, list) else list(rows)
    db.executemany(_INSERT, map(_values, batch))
    rollup_batch.add(db, batch)


_IMPORTS = "CREATE TABLE IF NOT EXISTS imports (name TEXT PRIMARY KEY, rows INTEGER, at INTEGER)"


def import_original_csv(
    db: sqlite3.Connection, folder: Path, keys: Iterable[tuple[str, str, str]]
) -> int:
    """Import the original llm-proxy's `analytics/<md5 of key>.csv` files, each exactly once.

    `keys` are (key, id, username). Each file is imported in one transaction together with its
    marker, so several processes racing at start-up import it once. Returns the rows imported.
    """
    imported = 0
    db.execute(_IMPORTS)
    for secret, key_id, username in keys:
        path = original_csv_path(folder, secret)
        if not path.exists():
            continue
        rows = list(original_rows(path, key_id, username))
        with db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM imports WHERE name = ?", (path.name,)).fetchone():
                continue
            _insert(db, rows)
            db.execute(
                "INSERT INTO imports VALUES (?, ?, ?)",
                (path.name, len(rows), int(time.time() * 1000)),
            )
        imported += len(rows)
    return imported


def original_csv_path(folder: Path, secret: str) -> Path:
    """The original's file for a key: it names each key's file by the MD5 of the key."""
    return folder / (hashlib.md5(secret.encode()).hexdigest() + ".csv")


def original_rows(path: Path, key_id: str, username: str) -> Iterator[RequestRow]:
    """The requests of one of the original's CSV files (`startTime,endTime` lines), as rows."""
    with path.open(newline="") as f:
        for line in csv.reader(f):
            if len(line) != 2 or not line[0].strip().isdigit():
                continue  # the header, blank or broken lines
            start = int(line[0])
            end = int(line[1]) if line[1].strip().isdigit() else None
            yield RequestRow(
                request_id="imported",
                key_id=key_id,
                username=username,
                start_ms=start,
                end_ms=end,
                status=200 if end else 0,
                error=None if end else "failed (imported)",
            )


def prune(db: sqlite3.Connection, before_ms: int) -> int:
    """Delete rows that started before `before_ms`; returns how many. Rows not yet in the
    rollups (an upgrade still adding them) are kept until they are."""
    with db:
        done, upto = rollups.backfill_range(db)
        return db.execute(
            "DELETE FROM requests WHERE start_ms < ? AND (id <= ? OR id > ?)",
            (before_ms, done, upto),
        ).rowcount
