"""The admin's analytics: summaries, breakdowns and spend from the rollups (shared/rollups.py), a
key's records and their CSV export from the rows, read from the analytics store
(services/api/analytics_store.py: the proxy's `data/analytics.db`, or PostgreSQL).

Read-only: the proxy is the writer. A database that does not exist yet is empty. No
answer holds a window's rows in memory: sums come from the rollups (a few rows per period), a
key's records come at most MAX_RECORDS at a time (a cursor names the older ones), and the export
streams its rows in keyset pages, each read by a query of its own, so a slow download holds
neither a connection nor a read transaction (which would keep the WAL from being checkpointed).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.api.analytics_store import KeyRows
from services.api.request_fields import RECORD
from shared import rollups
from shared.apikeys import BUDGET_PERIODS, ApiKey, period_bounds
from shared.prices import Prices
from shared.rollups import LATENCY, TTFB, Query, histogram, percentile

if TYPE_CHECKING:
    from services.api.analytics_store import AnalyticsStore

BUCKETS = {"hour": rollups.HOUR, "day": rollups.DAY}

# Per answer of the records route: about 1.5 MB of JSON, read and made in 50-60 ms of CPU at
# ten million rows (10,000 took 340 ms of wall time on two loaded cores).
MAX_RECORDS = 5_000
EXPORT_PAGE = 2000
_RECORDS_CURSOR = re.compile(r"(\d{1,15}):(\d{1,19})")


class CursorError(ValueError):
    pass


@dataclass(frozen=True)
class Window:
    """Rows with `start <= start_ms <= end`."""

    start: int
    end: int


@dataclass(frozen=True)
class Records:
    """A key's records, oldest first, each as its JSON object; `next_cursor` names the records
    before them in the window (None: there are none)."""

    json: list[str]
    next_cursor: str | None


def records(
    store: AnalyticsStore, key_id: str, window: Window, limit: int, cursor: str | None = None
) -> Records:
    """The key's newest `limit` records in the window (before `cursor`), oldest first."""
    after = None
    if cursor is not None:
        match = _RECORDS_CURSOR.fullmatch(cursor)
        if match is None:
            raise CursorError("cursor must be one returned as nextCursor")
        after = (int(match.group(1)), int(match.group(2)))
    query = KeyRows(RECORD, key_id, window, after, limit + 1, as_json=True, descending=True)
    rows = store.key_rows(query)
    shown = rows[:limit]
    more = len(rows) > limit
    return Records(
        [row[0] for row in reversed(shown)], f"{shown[-1][1]}:{shown[-1][2]}" if more else None
    )


def _cell(value: Any) -> Any:
    # A text cell starting with one of these runs as a formula in spreadsheets.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def export_csv(
    store: AnalyticsStore, key_id: str, window: Window, page: int = EXPORT_PAGE
) -> Iterator[str]:
    """The key's records in the window as CSV, oldest first: the header at once, then a page of
    rows at a time, each page a query of its own after the last row sent."""
    yield ",".join(RECORD.names) + "\n"
    after = None
    while rows := store.key_rows(KeyRows(RECORD, key_id, window, after, page)):
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for row in rows:
            writer.writerow(_cell(v) for v in row[:-2])
        yield out.getvalue()
        if len(rows) < page:
            return
        after = rows[-1][-2], rows[-1][-1]


# Sums from the rollups ----------------------------------------------------------------------

_SERIES_MEASURES = (*rollups.COUNTS, *LATENCY, *TTFB)


def _counts(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": int(row["requests"] or 0),
        "failures": int(row["failures"] or 0),
        "promptTokens": int(row["prompt_tokens"] or 0),
        "completionTokens": int(row["completion_tokens"] or 0),
    }


def _filters(key_id: str | None) -> tuple[tuple[str, str], ...]:
    return (("key_id", key_id),) if key_id else ()


def summary(
    store: AnalyticsStore, key_id: str | None, window: Window, bucket: str
) -> dict[str, Any]:
    """Totals, a time series per bucket, and a per-key breakdown."""
    size = BUCKETS[bucket]
    filters = _filters(key_id)
    series_rows = store.sums(Query(window.start, window.end, (), filters, size, _SERIES_MEASURES))
    key_rows = store.sums(Query(window.start, window.end, ("key_id",), filters, 0, rollups.COUNTS))
    latency = [0] * rollups.BUCKETS
    series = []
    for row in series_rows:
        lat, ttfb = histogram(row, LATENCY), histogram(row, TTFB)
        latency = [a + b for a, b in zip(latency, lat, strict=True)]
        series.append(
            {
                "time": row["slot"],
                **_counts(row),
                "latencyP50": percentile(lat, 0.5),
                "latencyP95": percentile(lat, 0.95),
                "ttfbP50": percentile(ttfb, 0.5),
            }
        )
    keys = [
        {"keyId": row["key_id"], "username": row["username"], **_counts(row)} for row in key_rows
    ]
    totals: dict[str, Any] = {
        name: sum(k[name] for k in keys)
        for name in ("requests", "failures", "promptTokens", "completionTokens")
    }
    totals["latencyP50"] = percentile(latency, 0.5)
    totals["latencyP95"] = percentile(latency, 0.95)
    return {
        "bucket": bucket,
        "startDate": window.start,
        "endDate": window.end,
        "totals": totals,
        "series": series,
        "keys": sorted(keys, key=lambda k: (-k["requests"], k["keyId"])),
    }


BREAKDOWNS = {"key": "key_id", "model": "model", "upstream": "upstream"}
_BREAKDOWN_MEASURES = (*rollups.COUNTS, *rollups.SPEED, *LATENCY, *TTFB)


def breakdown(
    store: AnalyticsStore,
    by: str,
    window: Window,
    filters: dict[str, str],
    prices: Prices,
) -> list[dict[str, Any]]:
    """One row per key, model or upstream: requests, failures, tokens, percentiles, generation
    speed and cost, busiest first. `filters` are exact values of key_id, model or upstream."""
    dimension = BREAKDOWNS[by]
    chosen = tuple(sorted(filters.items()))
    found = store.sums(
        Query(window.start, window.end, (dimension,), chosen, 0, _BREAKDOWN_MEASURES)
    )
    costs: dict[str, float | None] = {}
    if prices:
        group = (dimension,) if dimension == "model" else (dimension, "model")
        tokens = ("prompt_tokens", "completion_tokens")
        for row in store.sums(Query(window.start, window.end, group, chosen, 0, tokens)):
            cost = prices.cost(row["model"], row["prompt_tokens"], row["completion_tokens"])
            costs[row[dimension]] = (costs.get(row[dimension]) or 0.0) + (cost or 0.0)
    merged = {row[dimension]: row for row in found}
    out = []
    for name, row in merged.items():
        lat, ttfb = histogram(row, LATENCY), histogram(row, TTFB)
        counts = _counts(row)
        gen_ms = float(row["gen_ms"] or 0)
        out.append(
            {
                "value": name,
                **({"username": row["username"]} if dimension == "key_id" else {}),
                **counts,
                "errorRate": round(counts["failures"] / counts["requests"], 4)
                if counts["requests"]
                else 0.0,
                "streams": int(row["streams"] or 0),
                "latencyP50": percentile(lat, 0.5),
                "latencyP95": percentile(lat, 0.95),
                "latencyP99": percentile(lat, 0.99),
                "ttfbP50": percentile(ttfb, 0.5),
                "ttfbP95": percentile(ttfb, 0.95),
                "tokensPerSecond": round(row["gen_tokens"] * 1000 / gen_ms, 1) if gen_ms else None,
                "cost": round(costs.get(name) or 0.0, 6) if prices else None,
                "lastUsed": row["last_ms"],
            }
        )
    return sorted(out, key=lambda r: (-r["requests"], r["value"]))


PERIODS = BUDGET_PERIODS  # spend is reported by the periods budgets count in
SPEND_BY = {"key": "key_id", "model": "model"}


def period_start(ms: int, period: str) -> int:
    """The UTC day, week (from Monday) or month that `ms` falls in, as its first millisecond:
    the periods of budgets."""
    return int(period_bounds(period, ms / 1000)[1] * 1000)


def spend(
    store: AnalyticsStore, by: str, period: str, window: Window, key_id: str | None, prices: Prices
) -> dict[str, Any]:
    """Tokens and cost per key or model, per day, week or month (UTC)."""
    dimension = SPEND_BY[by]
    group = (dimension,) if dimension == "model" else (dimension, "model")
    measures = ("prompt_tokens", "completion_tokens", "requests")
    if period == "day":
        found = store.sums(
            Query(window.start, window.end, group, _filters(key_id), rollups.DAY, measures)
        )
    else:  # a query per week or month: the database sums the days, not Python
        found = []
        start = window.start
        while start <= window.end:
            first = period_start(start, period)
            following = period_start(first + (7 if period == "week" else 32) * rollups.DAY, period)
            end = min(window.end, following - 1)
            for row in store.sums(Query(start, end, group, _filters(key_id), 0, measures)):
                found.append({**row, "slot": first})
            start = following
    periods: dict[int, dict[str, dict[str, Any]]] = {}
    unpriced: set[str] = set()
    for row in found:
        slot = period_start(row["slot"], period)
        name = row[dimension]
        entry = periods.setdefault(slot, {}).setdefault(
            name,
            {
                "value": name,
                **({"username": row["username"]} if dimension == "key_id" else {}),
                "requests": 0,
                "promptTokens": 0,
                "completionTokens": 0,
                "cost": 0.0,
            },
        )
        entry["requests"] += int(row["requests"] or 0)
        entry["promptTokens"] += int(row["prompt_tokens"] or 0)
        entry["completionTokens"] += int(row["completion_tokens"] or 0)
        cost = prices.cost(row["model"], row["prompt_tokens"], row["completion_tokens"])
        if cost is None:
            if row["prompt_tokens"] or row["completion_tokens"]:
                unpriced.add(row["model"])
        else:
            entry["cost"] += cost
    series = []
    for slot in sorted(periods):
        rows = sorted(periods[slot].values(), key=lambda r: (-r["cost"], r["value"]))
        for row in rows:
            row["cost"] = round(row["cost"], 6)
        series.append({"time": slot, "cost": round(sum(r["cost"] for r in rows), 6), "rows": rows})
    return {
        "by": by,
        "period": period,
        "startDate": window.start,
        "endDate": window.end,
        "currency": prices.currency,
        "total": round(sum(p["cost"] for p in series), 6),
        "unpricedModels": sorted(unpriced),
        "series": series,
    }


def key_usage(
    store: AnalyticsStore, keys: list[ApiKey], prices: Prices, now_ms: int
) -> dict[str, dict[str, Any]]:
    """Each key's last use, its requests and tokens today (UTC), and its budget's use in the
    current period, from the rollups."""
    day = now_ms - now_ms % rollups.DAY
    usage: dict[str, dict[str, Any]] = {
        k.id: {"lastUsed": None, "requestsToday": 0, "tokensToday": 0, "budget": None} for k in keys
    }
    for key_id, requests, prompt, completion in store.day_totals(day):
        if key_id in usage:
            usage[key_id]["requestsToday"] = requests
            usage[key_id]["tokensToday"] = prompt + completion
    for key_id, last in store.last_used([k.id for k in keys]).items():
        usage[key_id]["lastUsed"] = last
    for key in keys:
        if key.budget is not None:
            usage[key.id]["budget"] = _budget_use(store, key, prices, now_ms)
    return usage


def _budget_use(store: AnalyticsStore, key: ApiKey, prices: Prices, now_ms: int) -> dict[str, Any]:
    budget = key.budget
    assert budget is not None
    _, start, end = period_bounds(budget.period, now_ms / 1000)
    rows = store.key_tokens_by_model(key.id, int(start * 1000))
    out: dict[str, Any] = {"period": budget.period, "resetsAt": int(end * 1000)}
    if budget.tokens is not None:
        used = sum(p + c for _, p, c in rows)
        out |= {
            "tokens": budget.tokens,
            "usedTokens": used,
            "remainingTokens": max(0, budget.tokens - used),
        }
    if budget.cost is not None:
        cost = round(sum(prices.cost(m, p, c) or 0.0 for m, p, c in rows), 6)
        out |= {
            "cost": budget.cost,
            "usedCost": cost,
            "remainingCost": round(max(0.0, budget.cost - cost), 6),
        }
    return out
