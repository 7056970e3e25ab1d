"""The request log: the rows of `data/analytics.db`, filtered, sorted, a page at a time.

Pages are keyset pages: a cursor names the last row shown (its sort value, start and id), and the
next page starts after it, so a page costs the same at the end of ten million rows as at the
start, and rows written meanwhile neither shift nor repeat it. Rows are sorted by time (start,
then id) or by a measure (shared.analytics.SORT_KEYS: latency, time to first byte, tokens,
status; ties by start, then id), each served by an index in that order. Every filter is an exact
match the indexes of shared/analytics.py serve: the key (key, start), the model (model, start),
failures (start, of the failed rows only), the time (start); the others narrow what those find.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.api.reports import Window, reading
from services.api.request_fields import LOG
from shared.analytics import SORT_KEYS
from shared.rollups import OUTCOME_SQL, OUTCOMES

SORTS = tuple(SORT_KEYS)
ORDERS = ("desc", "asc")
MAX_LIMIT = 500
_NUMBER = r"-?\d{1,19}(?:\.\d{1,20})?(?:e[+-]?\d{1,3})?"
_CURSOR = re.compile(rf"({'|'.join(SORTS)}):(?:({_NUMBER}):)?(\d{{1,15}}):(\d{{1,19}})")


class CursorError(ValueError):
    pass


@dataclass(frozen=True)
class Filters:
    """Exact matches; None: any."""

    key_id: str | None = None
    model: str | None = None
    upstream: str | None = None
    status: int | None = None
    outcome: str | None = None
    stream: bool | None = None
    path: str | None = None
    request_id: str | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("key_id", self.key_id),
            ("model", self.model),
            ("upstream", self.upstream),
            ("status", self.status),
            ("path", self.path),
            ("request_id", self.request_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if self.stream is not None:
            where.append("stream = ?")
            args.append(int(self.stream))
        if self.outcome is not None:
            assert self.outcome in OUTCOMES
            where.append(f"{OUTCOME_SQL} = ?")
            args.append(self.outcome)
        # A failure of any kind has no end: say so, and the index of failures serves the query.
        failed = self.outcome not in (None, "ok") or (
            self.status is not None and not 200 <= self.status < 400
        )
        if failed:
            where.append("end_ms IS NULL")
        return where, args


@dataclass(frozen=True)
class Page:
    entries: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


@dataclass(frozen=True)
class Cursor:
    """The last row shown: its sort value (none for time), start and id."""

    sort: str
    value: int | float | None
    start: int
    row_id: int

    def __str__(self) -> str:
        value = "" if self.value is None else f"{self.value!r}:"
        return f"{self.sort}:{value}{self.start}:{self.row_id}"

    def keys(self) -> list[tuple[str, int | float]]:
        """(SQL, value) of each key of the order, most significant first."""
        first = [] if self.value is None else [(SORT_KEYS[self.sort], self.value)]
        return [*first, ("start_ms", self.start), ("id", self.row_id)]


def parse_cursor(text: str, sort: str) -> Cursor:
    match = _CURSOR.fullmatch(text)
    if match is None or match.group(1) != sort or (match.group(2) is None) != (sort == "time"):
        raise CursorError(f"cursor must be one returned as nextCursor for sort={sort}")
    raw = match.group(2)
    value = None if raw is None else float(raw) if any(c in raw for c in ".e") else int(raw)
    return Cursor(sort, value, int(match.group(3)), int(match.group(4)))


def _after(keys: list[tuple[str, int | float]], op: str) -> tuple[str, list[Any]]:
    """Rows after the keys' values in the order (`op` `<`: descending): lexicographic, with the
    first key also as a bound alone, so the index is read from the cursor on."""

    def rest(keys: list[tuple[str, int | float]]) -> tuple[str, list[Any]]:
        (sql, value), tail = keys[0], keys[1:]
        if not tail:
            return f"{sql} {op} ?", [value]
        inner, args = rest(tail)
        return f"({sql} {op} ? OR ({sql} = ? AND {inner}))", [value, value, *args]

    sql, value = keys[0]
    condition, args = rest(keys)
    return f"{sql} {op}= ? AND {condition}", [value, *args]


# A sort by a measure with filters: SQLite's planner, blind to the LIMIT, reads every row a
# filter's index finds and sorts them all (seconds for one key over 90 days), or reads the sort's
# index in order and checks each row (seconds when the filters are rare). The index is chosen
# here by the rows each way reads: a filter's index reads what it finds (counted in the index
# alone, up to FILTER_ROWS), the sort's about a page divided by the share of the window's rows
# that pass every filter (the window's rows estimated from the table's density).
FILTER_ROWS = 50_000


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


def _index(
    db: sqlite3.Connection, sort: str, filters: Filters, window: Window, limit: int
) -> str | None:
    """The index to read a page in, or None: the planner's choice (time, or no filter)."""
    candidates = _filter_indexes(filters)
    if sort == "time" or not candidates:
        return None
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
    in_order = (limit + 1) / share if share else float("inf")
    if best and fewest <= in_order:
        return best
    return f"requests_{sort}_start"


def _no_latency(sort: str, filters: Filters) -> bool:
    """Failures only, by latency: none has one, so all tie and their order is time's."""
    return sort == "latency" and "end_ms IS NULL" in filters.where()[0]


def page(
    path: Path,
    window: Window,
    filters: Filters,
    order: str = "desc",
    limit: int = 50,
    cursor: str | None = None,
    sort: str = "time",
) -> Page:
    """The entries after `cursor` (or the first), sorted by `sort`, greatest first with order
    `desc` (for time: newest first)."""
    where, args = filters.where()
    where.insert(0, "start_ms BETWEEN ? AND ?")
    args[:0] = [window.start, window.end]
    if cursor is not None:
        condition, after = _after(
            parse_cursor(cursor, sort).keys(), "<" if order == "desc" else ">"
        )
        where.append(condition)
        args += after
    direction = "DESC" if order == "desc" else "ASC"
    tied = sort == "time" or _no_latency(sort, filters)
    keys = ([] if tied else [SORT_KEYS[sort]]) + ["start_ms", "id"]
    with reading(path) as db:
        if db is None:
            return Page()
        index = None if tied else _index(db, sort, filters, window, limit)
        sql = (
            f"SELECT {LOG.select}, {SORT_KEYS[sort]} FROM requests"
            f"{f' INDEXED BY {index}' if index else ''} WHERE {' AND '.join(where)} "
            f"ORDER BY {', '.join(f'{key} {direction}' for key in keys)} LIMIT ?"
        )
        rows = db.execute(sql, [*args, limit + 1]).fetchall()
    entries = [LOG.entry(row[:-1]) for row in rows[:limit]]
    if len(rows) <= limit:
        return Page(entries)
    last, value = entries[-1], rows[limit - 1][-1]
    next_cursor = Cursor(sort, None if sort == "time" else value, last["startTime"], last["id"])
    return Page(entries, str(next_cursor))


def find(path: Path, request_id: str) -> dict[str, Any] | None:
    """The newest request with the id its client saw (`x-request-id`), or None."""
    with reading(path) as db:
        if db is None:
            return None
        row = db.execute(
            f"SELECT {LOG.select} FROM requests WHERE request_id = ? ORDER BY id DESC LIMIT 1",
            (request_id,),
        ).fetchone()
    return None if row is None else LOG.entry(row)
