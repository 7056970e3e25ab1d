"""The request log: the rows of the usage log, filtered, sorted, a page at a time, read from the
analytics store (services/api/analytics_store.py: `data/analytics.db`, or PostgreSQL).

Pages are keyset pages: a cursor names the last row shown (its sort value, start and id), and the
next page starts after it, so a page costs the same at the end of ten million rows as at the
start, and rows written meanwhile neither shift nor repeat it. Rows are sorted by time (start,
then id) or by a measure (shared.analytics.SORT_KEYS: latency, time to first byte, tokens,
status; ties by start, then id), each served by an index in that order. Every filter is an exact
match the indexes of shared/analytics.py serve: the key (key, start), the model (model, start),
failures (start, of the failed rows only), the time (start); the others narrow what those find.
A page's question is a `LogQuery`, whose SQL both stores share (`statement`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from services.api.analytics_store import AnalyticsStore
from services.api.reports import Window
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
            args.append(self.stream)
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


def _no_latency(sort: str, filters: Filters) -> bool:
    """Failures only, by latency: none has one, so all tie and their order is time's."""
    return sort == "latency" and "end_ms IS NULL" in filters.where()[0]


@dataclass(frozen=True)
class LogQuery:
    """A page of the request log: the rows in `window` that pass `filters`, after `cursor` (or
    the first), `limit` of them (and one more, to tell whether there are more), by `sort`,
    greatest first with order `desc` (for time: newest first)."""

    window: Window
    filters: Filters
    order: str = "desc"
    limit: int = 50
    cursor: Cursor | None = None
    sort: str = "time"

    @property
    def tied(self) -> bool:
        """Whether the rows are in the order of time alone (no measure to sort by first)."""
        return self.sort == "time" or _no_latency(self.sort, self.filters)

    def statement(self, table: str, index: str | None = None) -> tuple[str, list[Any]]:
        """The query (`?` placeholders) reading `table`, by `index` if named, and its arguments:
        each row LOG's values, then the sort value."""
        where, args = self.filters.where()
        where.insert(0, "start_ms BETWEEN ? AND ?")
        args[:0] = [self.window.start, self.window.end]
        if self.cursor is not None:
            condition, after = _after(self.cursor.keys(), "<" if self.order == "desc" else ">")
            where.append(condition)
            args += after
        direction = "DESC" if self.order == "desc" else "ASC"
        keys = ([] if self.tied else [SORT_KEYS[self.sort]]) + ["start_ms", "id"]
        sql = (
            f"SELECT {LOG.select}, {SORT_KEYS[self.sort]} FROM {table}"
            f"{f' INDEXED BY {index}' if index else ''} WHERE {' AND '.join(where)} "
            f"ORDER BY {', '.join(f'{key} {direction}' for key in keys)} LIMIT ?"
        )
        return sql, [*args, self.limit + 1]


def page(
    store: AnalyticsStore,
    window: Window,
    filters: Filters,
    order: str = "desc",
    limit: int = 50,
    cursor: str | None = None,
    sort: str = "time",
) -> Page:
    """The entries after `cursor` (or the first), sorted by `sort`, greatest first with order
    `desc` (for time: newest first)."""
    after = None if cursor is None else parse_cursor(cursor, sort)
    rows = store.log_rows(LogQuery(window, filters, order, limit, after, sort))
    entries = [LOG.entry(row[:-1]) for row in rows[:limit]]
    if len(rows) <= limit:
        return Page(entries)
    last, value = entries[-1], rows[limit - 1][-1]
    next_cursor = Cursor(sort, None if sort == "time" else value, last["startTime"], last["id"])
    return Page(entries, str(next_cursor))


def find(store: AnalyticsStore, request_id: str) -> dict[str, Any] | None:
    """The newest request with the id its client saw (`x-request-id`), or None."""
    row = store.find(request_id)
    return None if row is None else LOG.entry(row)
