"""The request log: the rows of `data/analytics.db`, filtered, in time order, a page at a time.

Pages are keyset pages: a cursor names the last row shown (its start and id), and the next page
starts after it, so a page costs the same at the end of ten million rows as at the start, and
rows written meanwhile neither shift nor repeat it. Every filter is an exact match the indexes
of shared/analytics.py serve: the key (key, start), the model (model, start), failures (start,
of the failed rows only), the time (start); the others narrow what those find.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.api.reports import Window, reading
from shared.rollups import OUTCOME_SQL, OUTCOMES

# Log entry fields: (name in the answer, column or SQL).
_FIELDS = (
    ("id", "id"),
    ("requestId", "request_id"),
    ("keyId", "key_id"),
    ("username", "username"),
    ("startTime", "start_ms"),
    ("endTime", "end_ms"),
    ("durationMs", "end_ms - start_ms"),
    ("status", "status"),
    ("outcome", OUTCOME_SQL),
    ("method", "method"),
    ("path", "path"),
    ("model", "model"),
    ("upstream", "upstream"),
    ("stream", "stream"),
    ("ttfbMs", "ttfb_ms"),
    ("queueMs", "queue_ms"),
    ("promptTokens", "prompt_tokens"),
    ("completionTokens", "completion_tokens"),
    ("usageEstimated", "usage_estimated"),
    ("bytesIn", "bytes_in"),
    ("bytesOut", "bytes_out"),
    ("error", "error"),
    ("endUser", "end_user"),
)
_SELECT = ", ".join(sql for _, sql in _FIELDS)
_NAMES = [name for name, _ in _FIELDS]
_CURSOR = re.compile(r"(\d{1,15})\.(\d{1,19})")
ORDERS = ("desc", "asc")
MAX_LIMIT = 500


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


def parse_cursor(text: str) -> tuple[int, int]:
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise CursorError("cursor must be one returned as nextCursor")
    return int(match.group(1)), int(match.group(2))


def _entry(row: tuple[Any, ...]) -> dict[str, Any]:
    entry = dict(zip(_NAMES, row, strict=True))
    entry["stream"] = bool(entry["stream"])
    entry["usageEstimated"] = bool(entry["usageEstimated"])
    return entry


def page(
    path: Path,
    window: Window,
    filters: Filters,
    order: str = "desc",
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """The entries after `cursor` (or the first), newest first with order `desc`."""
    where, args = filters.where()
    where.insert(0, "start_ms BETWEEN ? AND ?")
    args[:0] = [window.start, window.end]
    if cursor is not None:
        start, row_id = parse_cursor(cursor)
        # The first condition bounds the index range; the second steps past the cursor's row.
        if order == "desc":
            where.append("start_ms <= ? AND (start_ms < ? OR id < ?)")
        else:
            where.append("start_ms >= ? AND (start_ms > ? OR id > ?)")
        args += [start, start, row_id]
    direction = "DESC" if order == "desc" else "ASC"
    sql = (
        f"SELECT {_SELECT} FROM requests WHERE {' AND '.join(where)} "
        f"ORDER BY start_ms {direction}, id {direction} LIMIT ?"
    )
    with reading(path) as db:
        if db is None:
            return Page()
        rows = db.execute(sql, [*args, limit + 1]).fetchall()
    entries = [_entry(row) for row in rows[:limit]]
    more = len(rows) > limit
    last = entries[-1] if entries else None
    return Page(entries, f"{last['startTime']}.{last['id']}" if more and last else None)


def find(path: Path, request_id: str) -> dict[str, Any] | None:
    """The newest request with the id its client saw (`x-request-id`), or None."""
    with reading(path) as db:
        if db is None:
            return None
        row = db.execute(
            f"SELECT {_SELECT} FROM requests WHERE request_id = ? ORDER BY id DESC LIMIT 1",
            (request_id,),
        ).fetchone()
    return None if row is None else _entry(row)
