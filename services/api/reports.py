"""Reading `data/analytics.db` for the admin: records, summaries for charts, CSV export.

Read-only: the proxy is the database's writer. A database that does not exist yet is empty.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUCKETS = {"hour": 3600_000, "day": 86400_000}

# Record fields: the original's two, then ours.
RECORD_COLUMNS = {
    "startTime": "start_ms",
    "endTime": "end_ms",
    "status": "status",
    "model": "model",
    "upstream": "upstream",
    "path": "path",
    "stream": "stream",
    "ttfbMs": "ttfb_ms",
    "promptTokens": "prompt_tokens",
    "completionTokens": "completion_tokens",
    "bytesIn": "bytes_in",
    "bytesOut": "bytes_out",
    "error": "error",
    "queueMs": "queue_ms",
    "usageEstimated": "usage_estimated",
    "endUser": "end_user",
}


@dataclass(frozen=True)
class Window:
    """Rows with `start <= start_ms <= end`."""

    start: int
    end: int


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    if not path.exists():
        yield None
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        yield db
    finally:
        db.close()


def records(path: Path, key_id: str, window: Window, limit: int) -> list[dict[str, Any]]:
    """The key's newest `limit` records in the window, in the order they completed (the
    original's file order)."""
    select = ", ".join(RECORD_COLUMNS.values())
    with reading(path) as db:
        if db is None:
            return []
        rows = db.execute(
            f"SELECT {select} FROM requests WHERE key_id = ? AND start_ms BETWEEN ? AND ? "
            "ORDER BY id DESC LIMIT ?",
            (key_id, window.start, window.end, limit),
        ).fetchall()[::-1]
    names = list(RECORD_COLUMNS)
    records = [dict(zip(names, row, strict=True)) for row in rows]
    for record in records:
        record["stream"] = bool(record["stream"])
        record["usageEstimated"] = bool(record["usageEstimated"])
    return records


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    values.sort()
    return round(values[min(len(values) - 1, int(fraction * len(values)))], 1)


def summary(path: Path, key_id: str | None, window: Window, bucket: str) -> dict[str, Any]:
    """Totals, a time series per bucket, and a per-key breakdown."""
    size = BUCKETS[bucket]
    where = "start_ms BETWEEN ? AND ?" + (" AND key_id = ?" if key_id else "")
    args: tuple[Any, ...] = (window.start, window.end) + ((key_id,) if key_id else ())
    series: dict[int, dict[str, Any]] = {}
    keys: dict[str, dict[str, Any]] = {}
    latencies: dict[int, list[float]] = {}
    ttfbs: dict[int, list[float]] = {}
    with reading(path) as db:
        rows = (
            []
            if db is None
            else db.execute(
                "SELECT start_ms, end_ms, ttfb_ms, prompt_tokens, completion_tokens, key_id, "
                f"username FROM requests WHERE {where}",
                args,
            ).fetchall()
        )
    for start, end, ttfb, prompt, completion, row_key, username in rows:
        slot = start - start % size
        point = series.setdefault(
            slot,
            {"time": slot, "requests": 0, "failures": 0, "promptTokens": 0, "completionTokens": 0},
        )
        per_key = keys.setdefault(
            row_key,
            {
                "keyId": row_key,
                "username": username,
                "requests": 0,
                "failures": 0,
                "promptTokens": 0,
                "completionTokens": 0,
            },
        )
        for target in (point, per_key):
            target["requests"] += 1
            target["failures"] += end is None
            target["promptTokens"] += prompt or 0
            target["completionTokens"] += completion or 0
        if end is not None:
            latencies.setdefault(slot, []).append(end - start)
        if ttfb is not None:
            ttfbs.setdefault(slot, []).append(ttfb)
    for slot, point in series.items():
        point["latencyP50"] = _percentile(latencies.get(slot, []), 0.5)
        point["latencyP95"] = _percentile(latencies.get(slot, []), 0.95)
        point["ttfbP50"] = _percentile(ttfbs.get(slot, []), 0.5)
    every_latency = [v for values in latencies.values() for v in values]
    totals = {
        name: sum(k[name] for k in keys.values())
        for name in ("requests", "failures", "promptTokens", "completionTokens")
    }
    totals["latencyP50"] = _percentile(list(every_latency), 0.5)
    totals["latencyP95"] = _percentile(list(every_latency), 0.95)
    return {
        "bucket": bucket,
        "startDate": window.start,
        "endDate": window.end,
        "totals": totals,
        "series": [series[s] for s in sorted(series)],
        "keys": sorted(keys.values(), key=lambda k: -k["requests"]),
    }


def _cell(value: Any) -> Any:
    # A text cell starting with one of these runs as a formula in spreadsheets.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_COLUMNS)
    for row in rows:
        writer.writerow(_cell(row[name]) for name in RECORD_COLUMNS)
    return out.getvalue()
