"""A batch of new rows summed into its rollup rows in memory, as it is written.

The proxy's recorder writes rows in batches (services/proxy/recorder.py). Reading a batch back to
sum it in SQL (`rollups.ADD_ROWS`) cost about as much again as inserting it: every row's two
histogram buckets found by nested CASEs, then grouped twice. A batch has few groups (the
requests of an hour by key, model, upstream and outcome), so here each row is added to its
group's sums in one pass, the grains and levels are summed from those few groups, and each
rollup row is upserted once with the same merge (`rollups.UPSERT`). What an upgrade adds from
old rows (`rollups.backfill_step`) is still summed in SQL; tests/shared/test_rollup_batch.py
checks that both give the same rollups.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared import rollups
from shared.rollups import DAY, HOUR, MEASURES, TTFB, WEEK, WEEK_LEVELS, bucket_of, outcome_of

if TYPE_CHECKING:  # shared.analytics imports this module
    from shared.analytics import RequestRow

_LAT0 = MEASURES.index(rollups.LATENCY[0])
_TTFB0 = MEASURES.index(TTFB[0])
_LAST = MEASURES.index("last_ms")
_WIDTH = len(MEASURES)
_LEVELS = rollups.LEVEL_DIMENSIONS
_KEY_LEVELS = frozenset(level for level, dims in _LEVELS.items() if "key_id" in dims)

# A detail group: (hour, key_id, model, upstream, outcome); its sums in MEASURES order, then the
# greatest username (as SQL's MAX).
Group = tuple[int, str, str, str, str]


def detail(rows: Sequence[RequestRow]) -> dict[Group, list[Any]]:
    """The rows' sums per hour and key, model, upstream and outcome (`rollups.RAW_MEASURES`)."""
    groups: dict[Group, list[Any]] = {}
    for row in rows:
        start, end, ttfb, completion = row.start_ms, row.end_ms, row.ttfb_ms, row.completion_tokens
        outcome = "ok" if end is not None else outcome_of(None, row.status)
        group = (start - start % HOUR, row.key_id, row.model or "", row.upstream or "", outcome)
        sums = groups.get(group)
        if sums is None:
            sums = groups[group] = [0] * _WIDTH + [row.username]
        elif row.username > sums[_WIDTH]:
            sums[_WIDTH] = row.username
        sums[0] += 1  # requests
        sums[3] += row.prompt_tokens or 0
        sums[4] += completion or 0
        if row.stream:
            sums[2] += 1
        if ttfb is not None:
            sums[6] += ttfb
            sums[_TTFB0 + bucket_of(ttfb)] += 1
        if end is None:
            sums[1] += 1  # failures
        else:
            latency = end - start
            sums[5] += latency
            sums[_LAT0 + bucket_of(latency)] += 1
            if row.stream and completion and ttfb is not None and latency - ttfb > 0:
                sums[7] += completion  # gen_tokens
                sums[8] += latency - ttfb  # gen_ms
        if start > sums[_LAST]:
            sums[_LAST] = start
    return groups


def rollup_rows(
    groups: dict[Group, list[Any]], weeks_pending: tuple[int, int] | None = None
) -> list[tuple[Any, ...]]:
    """The rollup rows (`rollups` columns, in order) summed from detail groups, every grain and
    level; weeks `done <= week < upto` of `weeks_pending` are left out (an upgrade builds them
    from their days)."""
    out: dict[tuple[Any, ...], list[Any]] = {}
    for (hour, key_id, model, upstream, outcome), sums in groups.items():
        values = {"key_id": key_id, "model": model, "upstream": upstream, "outcome": outcome}
        week = hour - (hour - rollups.MONDAY) % WEEK
        pending = weeks_pending is not None and weeks_pending[0] <= week < weeks_pending[1]
        for grain, period in ((HOUR, hour), (DAY, hour - hour % DAY), (WEEK, week)):
            if grain == WEEK and pending:
                continue
            for level, kept in _LEVELS.items():
                if grain == WEEK and level not in WEEK_LEVELS:
                    continue
                dims = tuple(values[d] if d in kept else "" for d in rollups.DIMENSIONS)
                key = (grain, level, period, *dims)
                total = out.get(key)
                username = sums[_WIDTH] if level in _KEY_LEVELS else ""
                if total is None:
                    out[key] = [*sums[:_WIDTH], username]
                    continue
                for i in range(_LAST):
                    total[i] += sums[i]
                total[_LAST] = max(total[_LAST], sums[_LAST])
                total[_WIDTH] = max(total[_WIDTH], username)
    # Columns: grain, level, period_ms, the dimensions, username, the measures.
    return [(*key, total[_WIDTH], *total[:_WIDTH]) for key, total in out.items()]


def _weeks_pending(db: sqlite3.Connection) -> tuple[int, int] | None:
    found = dict(
        db.execute(
            "SELECT name, value FROM rollup_state WHERE name IN ('weeks_done', 'weeks_upto')"
        ).fetchall()
    )
    if len(found) < 2:
        return None
    return int(found["weeks_done"]), int(found["weeks_upto"])


def add(db: sqlite3.Connection, rows: Sequence[RequestRow]) -> None:
    """Add `rows` to the rollups, inside the caller's write transaction (which inserts them)."""
    if rows:
        db.executemany(rollups.UPSERT, rollup_rows(detail(rows), _weeks_pending(db)))
