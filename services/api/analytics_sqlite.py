"""The analytics store of one box (services/api/analytics_store.py): the proxy's
`data/analytics.db`, read-only.

Each question opens the database for itself and closes it after (so a slow CSV download holds
neither a connection nor a read transaction between its pages, which would keep the WAL from
being checkpointed). A database that does not exist yet, or that the proxy has not opened since
the rollups came, reads as empty.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.api.analytics_store import KeyRows
from services.api.reports import Window
from services.api.request_fields import LOG
from services.api.request_log import Filters, LogQuery
from shared import rollups
from shared.rollups import Query

# A sort by a measure with filters: SQLite's planner, blind to the LIMIT, reads every row a
# filter's index finds and sorts them all (seconds for one key over 90 days), or reads the sort's
# index in order and checks each row (seconds when the filters are rare). The index is chosen
# here by the rows each way reads: a filter's index reads what it finds (counted in the index
# alone, up to FILTER_ROWS), the sort's about a page divided by the share of the window's rows
# that pass every filter (the window's rows estimated from the table's density).
FILTER_ROWS = 50_000


class SqliteAnalytics:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection | None]:
        if not self.path.exists():
            yield None
            return
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'rollups'").fetchone():
                yield None
                return
            yield db
        finally:
            db.close()

    def sums(self, query: Query) -> list[dict[str, Any]]:
        with self.reading() as db:
            return [] if db is None else query.run(db)

    def key_rows(self, query: KeyRows) -> list[tuple[Any, ...]]:
        select = query.fields.select_json if query.as_json else query.fields.select
        with self.reading() as db:
            if db is None:
                return []
            return db.execute(*query.statement(select, "requests")).fetchall()

    def log_rows(self, query: LogQuery) -> list[tuple[Any, ...]]:
        with self.reading() as db:
            if db is None:
                return []
            index = None if query.tied else _index(db, query)
            sql, args = query.statement("requests", index)
            return db.execute(sql, args).fetchall()

    def find(self, request_id: str) -> tuple[Any, ...] | None:
        with self.reading() as db:
            if db is None:
                return None
            row: tuple[Any, ...] | None = db.execute(
                f"SELECT {LOG.select} FROM requests WHERE request_id = ? ORDER BY id DESC LIMIT 1",
                (request_id,),
            ).fetchone()
            return row

    def day_totals(self, day_ms: int) -> list[tuple[str, int, int, int]]:
        with self.reading() as db:
            if db is None:
                return []
            return db.execute(
                "SELECT key_id, requests, prompt_tokens, completion_tokens FROM rollups "
                "WHERE grain = ? AND level = ? AND period_ms = ?",
                (rollups.DAY, rollups.KEYS, day_ms),
            ).fetchall()

    def last_used(self, key_ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self.reading() as db:
            if db is None:
                return found
            for key_id in key_ids:
                row = db.execute(
                    "SELECT last_ms FROM rollups WHERE grain = ? AND level = ? AND key_id = ? "
                    "ORDER BY period_ms DESC LIMIT 1",
                    (rollups.DAY, rollups.KEYS, key_id),
                ).fetchone()
                if row:
                    found[key_id] = row[0]
        return found

    def key_tokens_by_model(self, key_id: str, since_ms: int) -> list[tuple[str, int, int]]:
        with self.reading() as db:
            return [] if db is None else rollups.key_tokens_by_model(db, key_id, since_ms)

    def close(self) -> None:
        pass  # nothing held between questions


def _filter_indexes(filters: Filters) -> list[tuple[str, str, list[Any]]]:
    """(index, condition it serves, arguments) for each filter that has an index."""
    found: list[tuple[str, str, list[Any]]] = []
    for index, column, value in (
        ("requests_key_start", "key_id", filters.key_id),
        ("requests_model_start", "model", filters.model),
        ("requests_status_start", "status", filters.status),
    ):
        if value is not None:
            found.append((index, f"{column} = ?", [value]))
    if "end_ms IS NULL" in filters.where()[0]:
        found.append(("requests_failed_start", "end_ms IS NULL", []))
    return found


def _window_rows(db: sqlite3.Connection, window: Window) -> float:
    """About how many rows the window holds, from the table's rows per millisecond."""
    # One query each: SQLite reads a lone MIN or MAX from the end of an index, not the table.
    first, last, low, high = (
        db.execute(f"SELECT {aggregate} FROM requests").fetchone()[0]
        for aggregate in ("MIN(start_ms)", "MAX(start_ms)", "MIN(id)", "MAX(id)")
    )
    if first is None or last <= first:
        return 1.0
    span = min(window.end, last) - max(window.start, first)
    return max(1.0, float((high - low + 1) * span / (last - first)))


def _index(db: sqlite3.Connection, query: LogQuery) -> str | None:
    """The index to read a page in, or None: the planner's choice (no filter)."""
    candidates = _filter_indexes(query.filters)
    if not candidates:
        return None
    window = query.window
    rows = _window_rows(db, window)
    share, best, fewest = 1.0, "", float(FILTER_ROWS + 1)
    for index, condition, args in candidates:
        (count,) = db.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM requests INDEXED BY {index} "
            f"WHERE {condition} AND start_ms BETWEEN ? AND ? LIMIT ?)",
            [*args, window.start, window.end, FILTER_ROWS + 1],
        ).fetchone()
        share *= min(1.0, count / rows)
        if count < fewest:
            best, fewest = index, count
    in_order = (query.limit + 1) / share if share else float("inf")
    if best and fewest <= in_order:
        return best
    return f"requests_{query.sort}_start"
