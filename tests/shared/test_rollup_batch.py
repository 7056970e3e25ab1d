"""A batch summed in memory gives the rollups that summing its rows in SQL gives."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import analytics, rollup_batch, rollups
from shared.analytics import RequestRow
from shared.rollups import WEEK
from tests.shared.test_rollups import _all_rollups, request_rows


def _summed_in_sql(path: Path, batches: list[list[RequestRow]]) -> list[tuple[object, ...]]:
    db = analytics.connect(path)
    for batch in batches:
        with db:
            db.execute("BEGIN IMMEDIATE")
            first = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM requests").fetchone()[0]
            db.executemany(analytics._INSERT, map(analytics._values, batch))
            rollups.add_rows(db, first, first + len(batch) - 1)
    try:
        return _all_rollups(db)
    finally:
        db.close()


def _summed_in_memory(path: Path, batches: list[list[RequestRow]]) -> list[tuple[object, ...]]:
    db = analytics.connect(path)
    for batch in batches:
        analytics.insert(db, batch)
    try:
        return _all_rollups(db)
    finally:
        db.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(request_rows(), max_size=40), min_size=1, max_size=3))
def test_a_batch_summed_in_memory_equals_its_rows_summed_in_sql(batches):
    with tempfile.TemporaryDirectory() as folder:
        in_sql = _summed_in_sql(Path(folder) / "sql.db", batches)
        in_memory = _summed_in_memory(Path(folder) / "memory.db", batches)
    assert in_memory == in_sql


def test_usernames_merge_as_sqls_max_and_levels_without_a_key_have_none():
    rows = [
        RequestRow("a", "k1", "bob", 1_800_000_000_000, 1_800_000_000_010, 200),
        RequestRow("b", "k1", "alice", 1_800_000_000_001, None, 502),
    ]
    found = rollup_batch.rollup_rows(rollup_batch.detail(rows))
    names = {(row[0], row[1]): row[7] for row in found}  # grain, level: username
    assert names[(rollups.HOUR, rollups.KEYS)] == "bob"
    assert names[(rollups.DAY, rollups.TOTAL)] == ""


def test_weeks_an_upgrade_still_builds_are_left_to_it():
    start = 1_800_000_000_000
    week = start - (start - rollups.MONDAY) % WEEK
    rows = [RequestRow("a", "k1", "u", start, start + 5, 200)]
    groups = rollup_batch.detail(rows)
    assert WEEK not in {r[0] for r in rollup_batch.rollup_rows(groups, (week, week + WEEK))}
    assert WEEK in {r[0] for r in rollup_batch.rollup_rows(groups, (0, week))}
