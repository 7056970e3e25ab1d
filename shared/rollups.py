"""Rollups of `requests`: what the analytics read instead of the rows, kept as the rows are written.

One table, `rollups`, holds sums per period (`grain`: an hour, a UTC day or a week from Monday,
`period_ms` its start) at five levels of detail, so that a question reads a few rows per period
whatever the traffic. A window without a series reads its whole weeks as weeks (90 days: 12
weeks and a few days instead of 90 days, each row summing 90 columns); weeks have every level
but DETAIL (`WEEK_LEVELS`):

| level | dimensions | answers |
|---|---|---|
| 0 `DETAIL` | key, model, upstream, outcome | a key by upstream or outcome |
| 1 `MODELS` | model, upstream | every key by model or upstream |
| 2 `KEYS` | key | one key's totals, every key side by side |
| 3 `TOTAL` | (none) | every key together |
| 4 `KEY_MODELS` | key, model | a key by model, spend (cost is per model) by key |

Tokens per key and model, what cost is computed from (prices are per model), are also kept in
an index of the level-4 rows (`rollups_tokens`), so that spend and cost per key read them from
the index alone instead of a wide row of the table per key, model and period.

A dimension a level does not have holds '' (as does a request without a model or upstream). Each
row holds counts, failures, token sums, the completion tokens and generation time of streamed
answers (tokens per second), the last request's start, and two histograms (latency of completed
requests, time to first byte) over fixed log-spaced buckets (`EDGES`), from which `percentile`
reads. Everything is a sum, so rows merge by adding: a batch of new rows is summed in memory
(shared/rollup_batch.py) and added with `INSERT ... ON CONFLICT DO UPDATE` in the transaction
that inserts the rows (an upgrade adds old rows with the same sums in SQL, `ADD_ROWS`),
and a window is read by adding the periods it covers (`cover`), with its ragged edges computed from
the rows themselves by the same SQL (`RAW_MEASURES`).

This module is the one place that knows the rollup columns. Its queries use only what SQLite and
PostgreSQL share (CTEs, UNION ALL, CASE, ON CONFLICT, `%` on integers, booleans tested with
`CASE WHEN stream`, `?` placeholders), and name their tables by a `Tables`: the embedded
database's (`SQLITE`), or PostgreSQL's (`shared.pg.rollups`, which also has its DDL and turns
the placeholders into psycopg's).
"""

from __future__ import annotations

import bisect
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

HOUR = 3600_000
DAY = 86400_000
WEEK = 7 * DAY
# Weeks start on Monday 00:00 UTC (as budgets' and spend's weeks do): 1970-01-05 was a Monday.
MONDAY = 4 * DAY
GRAINS = (HOUR, DAY, WEEK)


def week_of(ms: int) -> int:
    """The first millisecond of the week (from Monday, UTC) that `ms` falls in."""
    return ms - (ms - MONDAY) % WEEK


DETAIL, MODELS, KEYS, TOTAL, KEY_MODELS = 0, 1, 2, 3, 4
LEVEL_DIMENSIONS: dict[int, tuple[str, ...]] = {
    DETAIL: ("key_id", "model", "upstream", "outcome"),
    MODELS: ("model", "upstream"),
    KEYS: ("key_id",),
    TOTAL: (),
    KEY_MODELS: ("key_id", "model"),
}
DIMENSIONS = ("key_id", "model", "upstream", "outcome")
# The levels kept per week: all but DETAIL, four fifths of the rows of a day (one key's
# questions by upstream or outcome read its days), so that every batch the proxy writes adds
# few more rows than it did with hours and days alone.
WEEK_LEVELS = (MODELS, KEYS, TOTAL, KEY_MODELS)

# Histogram bucket i >= 1 holds EDGES[i-1] <= v < EDGES[i] milliseconds; bucket 0 is below 1 ms
# and the last is 2**20 ms (17.5 minutes) and above. Neighbouring edges are sqrt(2) apart, so a
# percentile read from them is within 19% of the exact one.
EDGES: tuple[float, ...] = tuple(2 ** (i / 2) for i in range(41))
BUCKETS = len(EDGES) + 1
LATENCY = tuple(f"lat_{i:02d}" for i in range(BUCKETS))
TTFB = tuple(f"ttfb_{i:02d}" for i in range(BUCKETS))

# Plain sums, in table order; `last_ms` merges by maximum.
SUMS = (
    "requests",
    "failures",
    "streams",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttfb_ms",
    "gen_tokens",
    "gen_ms",
    *LATENCY,
    *TTFB,
)
MEASURES = (*SUMS, "last_ms")

OUTCOMES = ("ok", "rate_limited", "client_error", "server_error", "incomplete")

# A row's outcome: completed, or why not. One definition for the rollups and the request log.
OUTCOME_SQL = (
    "CASE WHEN end_ms IS NOT NULL THEN 'ok' WHEN status = 429 THEN 'rate_limited' "
    "WHEN status >= 500 THEN 'server_error' WHEN status >= 400 THEN 'client_error' "
    "ELSE 'incomplete' END"
)


def outcome_of(end_ms: int | None, status: int) -> str:
    """`OUTCOME_SQL` in Python."""
    if end_ms is not None:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return "client_error" if status >= 400 else "incomplete"


def bucket_of(value: float) -> int:
    return bisect.bisect_right(EDGES, value)


def _bucket_sql(value: str) -> str:
    """`bucket_of(value)` in SQL: a binary search, six comparisons."""

    def search(low: int, high: int) -> str:  # the bucket is in low..high
        if low == high:
            return str(low)
        middle = (low + high) // 2
        return (
            f"CASE WHEN {value} < {EDGES[middle]!r} THEN {search(low, middle)} "
            f"ELSE {search(middle + 1, high)} END"
        )

    return f"CASE WHEN {value} IS NULL THEN NULL ELSE {search(0, len(EDGES))} END"


_LATENCY_VALUE = "(end_ms - start_ms)"
_GEN_MS = f"({_LATENCY_VALUE} - ttfb_ms)"
_GENERATING = (
    f"end_ms IS NOT NULL AND stream AND completion_tokens > 0 AND ttfb_ms IS NOT NULL "
    f"AND {_GEN_MS} > 0"
)


@dataclass(frozen=True)
class Tables:
    """The names of the tables the SQL of this module reads and writes."""

    requests: str
    rollups: str


SQLITE = Tables("requests", "rollups")


# The rows of `requests` with their histogram buckets, for RAW_MEASURES. Always in a
# MATERIALIZED common table expression: a plain subquery would be flattened into its reader,
# which would then compute the buckets once per histogram column instead of once per row.
def bucketed(source: str, alias: str = "requests") -> str:
    """The rows of `source` (a table, or a join whose rows are `alias`) with their buckets."""
    return (
        f"SELECT {alias}.*, {_bucket_sql(_LATENCY_VALUE)} AS lat_bucket, "
        f"{_bucket_sql('ttfb_ms')} AS ttfb_bucket FROM {source}"
    )


_BUCKETED = bucketed("requests")

# Aggregates over `requests` rows (bucketed) giving MEASURES, in order.
RAW_MEASURES = (
    "COUNT(*)",
    "SUM(CASE WHEN end_ms IS NULL THEN 1 ELSE 0 END)",
    "SUM(CASE WHEN stream THEN 1 ELSE 0 END)",
    "COALESCE(SUM(prompt_tokens), 0)",
    "COALESCE(SUM(completion_tokens), 0)",
    f"COALESCE(SUM({_LATENCY_VALUE}), 0)",
    "COALESCE(SUM(ttfb_ms), 0)",
    f"SUM(CASE WHEN {_GENERATING} THEN completion_tokens ELSE 0 END)",
    f"SUM(CASE WHEN {_GENERATING} THEN {_GEN_MS} ELSE 0 END)",
    *(f"SUM(CASE WHEN lat_bucket = {i} THEN 1 ELSE 0 END)" for i in range(BUCKETS)),
    *(f"SUM(CASE WHEN ttfb_bucket = {i} THEN 1 ELSE 0 END)" for i in range(BUCKETS)),
    "MAX(start_ms)",
)
_RAW_DIMENSIONS = {
    "key_id": "key_id",
    "model": "COALESCE(model, '')",
    "upstream": "COALESCE(upstream, '')",
    "outcome": OUTCOME_SQL,
}


# What a question of tokens per key and model (cost: spend, a breakdown's cost) reads, as an
# index of the KEY_MODELS rows: read from the index alone, in period order, instead of one row
# of the table (wide with histograms, anywhere in it) per key, model and period. A question
# uses it when it names its grain and level as literals (a partial index is not chosen for a
# bound parameter) and reads only these columns.
TOKENS_INDEXED = (
    "grain",
    "level",
    "period_ms",
    "key_id",
    "model",
    "username",
    "requests",
    "prompt_tokens",
    "completion_tokens",
)


def _type(name: str) -> str:
    return "REAL" if name.endswith("_ms") else "INTEGER"


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rollups (
    grain INTEGER NOT NULL,
    level INTEGER NOT NULL,
    period_ms INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream TEXT NOT NULL,
    outcome TEXT NOT NULL,
    username TEXT NOT NULL,
    {", ".join(f"{name} {_type(name)} NOT NULL" for name in SUMS)},
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (grain, level, period_ms, key_id, model, upstream, outcome)
);
CREATE INDEX IF NOT EXISTS rollups_key ON rollups (grain, level, key_id, period_ms);
CREATE INDEX IF NOT EXISTS rollups_tokens ON rollups ({", ".join(TOKENS_INDEXED)})
    WHERE level = {KEY_MODELS};
CREATE TABLE IF NOT EXISTS rollup_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COLUMNS = ("grain", "level", "period_ms", *DIMENSIONS, "username", *MEASURES)


def merge_sql(table: str) -> str:
    """The SET of an upsert into `table` adding a row to the one already there."""
    return ", ".join(
        [f"{n} = {table}.{n} + excluded.{n}" for n in SUMS]
        + [
            f"last_ms = CASE WHEN excluded.last_ms > {table}.last_ms "
            f"THEN excluded.last_ms ELSE {table}.last_ms END",
            "username = excluded.username",
        ]
    )


_MERGE = merge_sql("rollups")
# One rollup row added (shared/rollup_batch.py, which sums a batch's rows in memory).
UPSERT = (
    f"INSERT INTO rollups ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT (grain, level, period_ms, {', '.join(DIMENSIONS)}) DO UPDATE SET {_MERGE}"
)


_WEEK_OF_HOUR = f"hour - (hour - {MONDAY}) % {WEEK}"
# Whether the week starting at {week} is one an upgrade has still to build from the days.
_WEEK_PENDING = (
    "{week} >= (SELECT value FROM rollup_state WHERE name = 'weeks_done') "
    "AND {week} < (SELECT value FROM rollup_state WHERE name = 'weeks_upto')"
)


def add_rows_sql(
    rows: str = f"bucketed AS MATERIALIZED ({_BUCKETED} WHERE id BETWEEN ? AND ?)",
    table: str = "rollups",
    weeks_pending: bool = True,
) -> str:
    """One statement adding rows to every grain and level of `table`: the rows are read once,
    into hourly detail, which every other row is summed from. `rows` is the common table
    expression `bucketed` that names them (after any it needs), by default those with
    `first <= id <= last`; `weeks_pending`: leave the weeks an upgrade still builds to it."""
    dims = ", ".join(f"{sql} AS {name}" for name, sql in _RAW_DIMENSIONS.items())
    measures = ", ".join(
        f"{sql} AS {name}" for sql, name in zip(RAW_MEASURES, MEASURES, strict=True)
    )
    group = ", ".join(["hour", *_RAW_DIMENSIONS.values()])
    base = (
        f"SELECT start_ms - start_ms % {HOUR} AS hour, {dims}, MAX(username) AS username, "
        f"{measures} FROM bucketed GROUP BY {group}"
    )
    parts = []
    summed = ", ".join(f"SUM({n})" for n in SUMS) + ", MAX(last_ms)"
    for grain in GRAINS:
        period = {HOUR: "hour", DAY: f"hour - hour % {DAY}", WEEK: _WEEK_OF_HOUR}[grain]
        # Weeks an upgrade is still building from the days are left to it (`backfill_step`).
        where = (
            f"WHERE NOT ({_WEEK_PENDING.format(week=period)})"
            if grain == WEEK and weeks_pending
            else ""
        )
        for level, kept in LEVEL_DIMENSIONS.items():
            if grain == WEEK and level not in WEEK_LEVELS:
                continue
            keys = [period, *kept]
            dims_out = ", ".join(d if d in kept else "''" for d in DIMENSIONS)
            username = "MAX(username)" if "key_id" in kept else "''"
            parts.append(
                f"SELECT {grain}, {level}, {period}, {dims_out}, {username}, {summed} "
                f"FROM base {where} GROUP BY {', '.join(keys)}"
            )
    return (
        f"WITH {rows}, "
        f"base AS MATERIALIZED ({base}) INSERT INTO {table} ({', '.join(_COLUMNS)}) "
        f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS added WHERE 1 = 1 "
        f"ON CONFLICT (grain, level, period_ms, {', '.join(DIMENSIONS)}) "
        f"DO UPDATE SET {merge_sql(table)}"
    )


ADD_ROWS = add_rows_sql()


def add_rows(db: sqlite3.Connection, first_id: int, last_id: int) -> None:
    """Add the rows with ids `first_id..last_id` to the rollups (inside the caller's
    transaction, which also inserted them)."""
    if last_id >= first_id:
        db.execute(ADD_ROWS, (first_id, last_id))


# Upgrade: rows written before the rollups existed are added in batches, oldest first.
# `backfill_upto` (the last id then) is set when the table is made, in the same transaction;
# `backfill_done` is the last id added so far, moved in the transaction that adds a batch.
def key_tokens_by_model(
    db: sqlite3.Connection, key_id: str, since_ms: int
) -> list[tuple[str, int, int]]:
    """(model, prompt tokens, completion tokens) of a key since `since_ms`, the first
    millisecond of a UTC day, from the daily rollups: what budgets count."""
    return db.execute(
        "SELECT model, SUM(prompt_tokens), SUM(completion_tokens) FROM rollups "
        "WHERE grain = ? AND level = ? AND key_id = ? AND period_ms >= ? GROUP BY model",
        (DAY, KEY_MODELS, key_id, since_ms),
    ).fetchall()


BACKFILL_BATCH = 50_000


def create(db: sqlite3.Connection) -> None:
    """Create the tables; a database that has rows but no rollups yet gets its backfill marker.
    Runs inside the caller's write transaction."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(
        "INSERT INTO rollup_state (name, value) SELECT 'backfill_upto', COALESCE(MAX(id), 0) "
        "FROM requests WHERE 1 = 1 ON CONFLICT (name) DO NOTHING"
    )
    db.execute(
        "INSERT INTO rollup_state (name, value) VALUES ('backfill_done', 0) "
        "ON CONFLICT (name) DO NOTHING"
    )
    # Rollups from before the weekly grain: their weeks are built from their days by
    # `backfill_step`, oldest first, from the first week that has a day to the week after the
    # last one. Meanwhile new rows are added to the other weeks only (ADD_ROWS), and readers
    # read days (`weeks_ready`). A database without days yet has nothing to build.
    for name, bound, after in (("weeks_done", "MIN", 0), ("weeks_upto", "MAX", WEEK)):
        db.execute(
            f"INSERT INTO rollup_state (name, value) SELECT '{name}', "
            f"COALESCE({bound}(period_ms) - ({bound}(period_ms) - {MONDAY}) % {WEEK} + {after}, 0) "
            f"FROM rollups WHERE grain = {DAY} ON CONFLICT (name) DO NOTHING"
        )


def _state(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM rollup_state WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def backfill_range(db: sqlite3.Connection) -> tuple[int, int]:
    """(done, upto): the ids `done < id <= upto` are not in the rollups yet."""
    return _state(db, "backfill_done"), _state(db, "backfill_upto")


def _weeks_left(db: sqlite3.Connection) -> int:
    return max(0, _state(db, "weeks_upto") - _state(db, "weeks_done")) // WEEK


def weeks_ready(db: sqlite3.Connection) -> bool:
    """Whether every week holds its days: not while an upgrade builds them, nor before the
    proxy has opened the database since weeks came (it has no marker of them yet)."""
    have = db.execute(
        "SELECT COUNT(*) FROM rollup_state WHERE name IN ('weeks_done', 'weeks_upto')"
    ).fetchone()[0]
    return have == 2 and _weeks_left(db) == 0


def backfill_left(db: sqlite3.Connection) -> int:
    """How much an upgrade still has to add (0 once done): the ids, and the weeks to build."""
    done, upto = backfill_range(db)
    return max(0, upto - done) + _weeks_left(db)


_COLUMN_LIST = ", ".join(_COLUMNS)
# The weeks `? <= period < ?` built from their days (no row of them exists yet).
_BUILD_WEEKS = (
    f"INSERT INTO rollups ({_COLUMN_LIST}) SELECT * FROM ("
    f"SELECT {WEEK}, level, period_ms - (period_ms - {MONDAY}) % {WEEK} AS week, "
    f"{', '.join(DIMENSIONS)}, MAX(username), {', '.join(f'SUM({n})' for n in SUMS)}, "
    f"MAX(last_ms) FROM rollups WHERE grain = {DAY} AND period_ms >= ? AND period_ms < ? "
    f"AND level IN ({', '.join(map(str, WEEK_LEVELS))}) "
    f"GROUP BY level, week, {', '.join(DIMENSIONS)}) AS built WHERE 1 = 1 "
    f"ON CONFLICT (grain, level, period_ms, {', '.join(DIMENSIONS)}) DO UPDATE SET {_MERGE}"
)
WEEKS_BATCH = 4


def backfill_step(
    db: sqlite3.Connection, batch: int = BACKFILL_BATCH, weeks: int = WEEKS_BATCH
) -> int:
    """Do the next piece of an upgrade in its own transaction: build the next `weeks` weeks
    from their days, or else add the next `batch` old rows. Returns what is left after it
    (`backfill_left`). Idempotent and resumable: each piece and its marker move together."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        week_done, week_upto = _state(db, "weeks_done"), _state(db, "weeks_upto")
        upto, done = _state(db, "backfill_upto"), _state(db, "backfill_done")
        if week_done < week_upto:
            last = min(week_upto, week_done + weeks * WEEK)
            db.execute(_BUILD_WEEKS, (week_done, last))
            db.execute("UPDATE rollup_state SET value = ? WHERE name = 'weeks_done'", (last,))
        elif done < upto:
            last = min(upto, done + batch)
            add_rows(db, done + 1, last)
            db.execute("UPDATE rollup_state SET value = ? WHERE name = 'backfill_done'", (last,))
        return backfill_left(db)


def prune(db: sqlite3.Connection, before_ms: int) -> int:
    """Delete the periods that started before `before_ms`; returns how many rows."""
    with db:
        return db.execute("DELETE FROM rollups WHERE period_ms < ?", (before_ms,)).rowcount


# Reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Part of a window read from one source: `grain` rows (HOUR or DAY), or the raw rows when
    `grain` is 0, whose start is in `start <= t <= end`."""

    grain: int
    start: int
    end: int


def _by_weeks(first_day: int, after_last_day: int) -> list[Segment]:
    """Whole days `first_day <= t < after_last_day` as days, whole weeks and days."""
    first_week = first_day + (MONDAY - first_day) % WEEK
    after_last_week = week_of(after_last_day)
    if first_week >= after_last_week:
        return [Segment(DAY, first_day, after_last_day - 1)]
    segments = [Segment(DAY, first_day, first_week - 1)] if first_day < first_week else []
    segments.append(Segment(WEEK, first_week, after_last_week - 1))
    if after_last_week < after_last_day:
        segments.append(Segment(DAY, after_last_week, after_last_day - 1))
    return segments


def cover(start: int, end: int, slot: int, weeks: bool = True) -> list[Segment]:
    """The window `start <= t <= end` as raw edges, whole hours, whole days and whole weeks
    (days only where series slots are at least a day, or there are none, so that no period
    straddles two slots; weeks only where there are none, and when `weeks` are ready)."""
    segments: list[Segment] = []
    first_hour = -(-start // HOUR) * HOUR
    after_last_hour = (end + 1) // HOUR * HOUR
    if first_hour >= after_last_hour:
        return [Segment(0, start, end)]
    if start < first_hour:
        segments.append(Segment(0, start, first_hour - 1))
    if slot == 0 or slot >= DAY:
        first_day = -(-first_hour // DAY) * DAY
        after_last_day = after_last_hour // DAY * DAY
        if first_day < after_last_day:
            if first_hour < first_day:
                segments.append(Segment(HOUR, first_hour, first_day - 1))
            if slot == 0 and weeks:
                segments += _by_weeks(first_day, after_last_day)
            else:
                segments.append(Segment(DAY, first_day, after_last_day - 1))
            if after_last_day < after_last_hour:
                segments.append(Segment(HOUR, after_last_day, after_last_hour - 1))
        else:
            segments.append(Segment(HOUR, first_hour, after_last_hour - 1))
    else:
        segments.append(Segment(HOUR, first_hour, after_last_hour - 1))
    if after_last_hour <= end:
        segments.append(Segment(0, after_last_hour, end))
    return segments


def level_for(dimensions: Iterable[str]) -> int:
    """The least detailed level that has every dimension named (grouped by or filtered on)."""
    wanted = set(dimensions)
    for level in (TOTAL, KEYS, MODELS, KEY_MODELS, DETAIL):
        if wanted <= set(LEVEL_DIMENSIONS[level]):
            return level
    return DETAIL


@dataclass(frozen=True)
class Query:
    """Sums over a window, grouped by series slot (`slot` ms, 0 for none) and `group` dimensions,
    with equality `filters` on dimensions; `measures` are the MEASURES wanted."""

    start: int
    end: int
    group: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()
    slot: int = 0
    measures: tuple[str, ...] = MEASURES

    def __post_init__(self) -> None:
        if "requests" not in self.measures:  # an empty group is left out by its count
            object.__setattr__(self, "measures", ("requests", *self.measures))

    def sql(self, weeks: bool = True, tables: Tables = SQLITE) -> tuple[str, list[Any]]:
        """The query and its arguments; `weeks`: read whole weeks from their rollups."""
        level = level_for([*self.group, *(name for name, _ in self.filters)])
        parts: list[str] = []
        args: list[Any] = []
        edges: list[str] = []
        edge_args: list[Any] = []
        weeks = weeks and level in WEEK_LEVELS
        for segment in cover(self.start, self.end, self.slot, weeks):
            if segment.grain == 0:
                time, slot = "start_ms", self._slot("start_ms")
                dims = [f"{_RAW_DIMENSIONS[d]} AS {d}" for d in self.group]
                where = [f"{_RAW_DIMENSIONS[name]} = ?" for name, _ in self.filters]
                measures = [f"{RAW_MEASURES[MEASURES.index(m)]} AS {m}" for m in self.measures]
                source = tables.requests
                if _needs_buckets(self.measures):
                    source = f"edge{len(edges)}"
                    edges.append(
                        f"{source} AS MATERIALIZED "
                        f"({bucketed(tables.requests, tables.requests)} "
                        "WHERE start_ms BETWEEN ? AND ?)"
                    )
                    edge_args += [segment.start, segment.end]
                username = ["MAX(username) AS username"] if "key_id" in self.group else []
            else:
                time, slot = "period_ms", self._slot("period_ms")
                dims = list(self.group)
                # Literals (two integers of ours), so that a partial index can be chosen.
                where = [f"grain = {segment.grain:d}", f"level = {level:d}"]
                where += [f"{name} = ?" for name, _ in self.filters]
                measures = [
                    f"{'MAX' if m == 'last_ms' else 'SUM'}({m}) AS {m}" for m in self.measures
                ]
                source = tables.rollups
                username = ["MAX(username) AS username"] if "key_id" in self.group else []
            args += [value for _, value in self.filters] + [segment.start, segment.end]
            where.append(f"{time} BETWEEN ? AND ?")
            group = [_RAW_DIMENSIONS[d] if segment.grain == 0 else d for d in self.group]
            if self.slot:
                group.insert(0, slot)
            parts.append(
                f"SELECT {', '.join([slot + ' AS slot', *dims, *username, *measures])} "
                f"FROM {source} WHERE {' AND '.join(where)}"
                + (f" GROUP BY {', '.join(group)}" if group else "")
            )
        outer = [f"{'MAX' if m == 'last_ms' else 'SUM'}({m}) AS {m}" for m in self.measures]
        names = ", ".join(["slot", *self.group])
        username = ["MAX(username) AS username"] if "key_id" in self.group else []
        sql = (
            (f"WITH {', '.join(edges)} " if edges else "")
            + f"SELECT {', '.join(['slot', *self.group, *username, *outer])} "
            f"FROM ({' UNION ALL '.join(parts)}) AS parts GROUP BY {names} "
            f"HAVING SUM(requests) > 0 ORDER BY {names}"
        )
        return sql, edge_args + args

    def _slot(self, column: str) -> str:
        return f"({column} - {column} % {self.slot})" if self.slot else "0"

    def run(self, db: sqlite3.Connection) -> list[dict[str, Any]]:
        """The groups, each a dict of `slot`, the group's dimensions (and `username` with
        key_id) and the measures."""
        sql, args = self.sql(weeks_ready(db))
        cursor = db.execute(sql, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]


def _needs_buckets(measures: Sequence[str]) -> bool:
    return any(m in LATENCY or m in TTFB for m in measures)


# Measures a question names: the counters, and a histogram by its name.
COUNTS = ("requests", "failures", "prompt_tokens", "completion_tokens", "last_ms")
SPEED = ("streams", "gen_tokens", "gen_ms", "latency_ms", "ttfb_ms")


def percentile(counts: Sequence[int], fraction: float) -> float | None:
    """The value below which `fraction` of a histogram's values lie, interpolated within its
    bucket on the log scale (None for an empty histogram). The rank is the one an exact
    percentile of the sorted values would take (`values[int(fraction * n)]`)."""
    total = sum(counts)
    if not total:
        return None
    rank = min(total - 1, int(fraction * total))
    seen = 0
    for index, count in enumerate(counts):
        if rank < seen + count:
            position = (rank - seen + 0.5) / count
            if index == 0:
                return round(position * EDGES[0], 1)
            low = EDGES[index - 1]
            high = EDGES[index] if index < len(EDGES) else low * math.sqrt(2)
            return round(low * math.pow(high / low, position), 1)
        seen += count
    return None  # pragma: no cover - the rank is always inside


def histogram(row: dict[str, Any], names: Sequence[str]) -> list[int]:
    return [int(row.get(name) or 0) for name in names]
