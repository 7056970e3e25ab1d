"""Rollups: every sum read from them equals the same sum computed directly from the rows."""

from __future__ import annotations

import itertools
import math
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import analytics, rollups
from shared.analytics import RequestRow
from shared.rollups import DAY, HOUR, LATENCY, MEASURES, TTFB, WEEK, Query

BASE = 1_800_000_000_000 - 1_800_000_000_000 % DAY  # a UTC midnight
SPAN = 17 * DAY  # whole weeks, days and hours


@st.composite
def request_rows(draw: st.DrawFn) -> RequestRow:
    start = draw(st.integers(BASE, BASE + SPAN))
    failed = draw(st.booleans())
    status = draw(st.sampled_from([0, 404, 429, 500, 502])) if failed else 200
    tokens = st.none() | st.integers(0, 5000)
    row = RequestRow(
        request_id=draw(st.text("0123456789abcdef", min_size=1, max_size=8)),
        key_id=draw(st.sampled_from(["k1", "k2", "k3"])),
        username="user",
        start_ms=start,
        end_ms=None if failed else start + draw(st.integers(0, 2_000_000)),
        status=status,
        model=draw(st.sampled_from([None, "model-a", "model-b"])),
        upstream=draw(st.sampled_from([None, "http://one", "http://two"])),
        stream=draw(st.booleans()),
        ttfb_ms=draw(st.none() | st.floats(0, 2_000_000, allow_nan=False)),
        prompt_tokens=draw(tokens),
        completion_tokens=draw(tokens),
    )
    row.username = "user-" + row.key_id
    return row


def _direct(rows: list[RequestRow], query: Query) -> dict[tuple[Any, ...], dict[str, Any]]:
    """What the query should answer, computed from the rows in Python."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        if not query.start <= row.start_ms <= query.end:
            continue
        dims = {
            "key_id": row.key_id,
            "model": row.model or "",
            "upstream": row.upstream or "",
            "outcome": rollups.outcome_of(row.end_ms, row.status),
        }
        if any(dims[name] != value for name, value in query.filters):
            continue
        slot = row.start_ms - row.start_ms % query.slot if query.slot else 0
        group = (slot, *(dims[d] for d in query.group))
        sums = out.setdefault(group, dict.fromkeys(MEASURES, 0))
        latency = None if row.end_ms is None else row.end_ms - row.start_ms
        sums["requests"] += 1
        sums["failures"] += row.end_ms is None
        sums["streams"] += row.stream
        sums["prompt_tokens"] += row.prompt_tokens or 0
        sums["completion_tokens"] += row.completion_tokens or 0
        sums["latency_ms"] += latency or 0
        sums["ttfb_ms"] += row.ttfb_ms or 0
        generating = (
            latency is not None
            and row.stream
            and (row.completion_tokens or 0) > 0
            and row.ttfb_ms is not None
            and latency - row.ttfb_ms > 0
        )
        if generating:
            assert latency is not None and row.ttfb_ms is not None
            sums["gen_tokens"] += row.completion_tokens
            sums["gen_ms"] += latency - row.ttfb_ms
        if latency is not None:
            sums[LATENCY[rollups.bucket_of(latency)]] += 1
        if row.ttfb_ms is not None:
            sums[TTFB[rollups.bucket_of(row.ttfb_ms)]] += 1
        sums["last_ms"] = max(sums["last_ms"], row.start_ms)
    return out


def _same(found: list[dict[str, Any]], expected: dict[tuple[Any, ...], dict[str, Any]], q: Query):
    got = {(r["slot"], *(r[d] for d in q.group)): r for r in found}
    assert set(got) == set(expected)
    for group, sums in expected.items():
        for name in q.measures:
            value = sums[name]
            assert math.isclose(got[group][name], value, rel_tol=1e-9, abs_tol=1e-6), (group, name)


# What the reports ask: everything, the counts, or tokens alone (cost, read from an index).
MEASURE_SETS = [MEASURES, rollups.COUNTS, ("prompt_tokens", "completion_tokens")]

queries = st.builds(
    lambda a, b, group, key, slot, measures: Query(
        min(a, b), max(a, b), group, (("key_id", key),) if key else (), slot, measures
    ),
    st.integers(BASE - HOUR, BASE + SPAN + HOUR),
    st.integers(BASE - HOUR, BASE + SPAN + HOUR),
    st.sampled_from(
        [
            (),
            ("key_id",),
            ("model",),
            ("upstream",),
            ("model", "upstream"),
            ("key_id", "model"),
            ("outcome",),
            ("key_id", "model", "upstream", "outcome"),
        ]
    ),
    st.sampled_from([None, "k1", "k2"]),
    st.sampled_from([0, HOUR, DAY]),
    st.sampled_from(MEASURE_SETS),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(request_rows(), max_size=40), min_size=1, max_size=3),
    questions=st.lists(queries, min_size=1, max_size=4),
)
def test_rollups_equal_sums_of_the_rows(batches, questions):
    with tempfile.TemporaryDirectory() as folder:
        db = analytics.connect(Path(folder) / "analytics.db")
        for batch in batches:
            analytics.insert(db, batch)
        rows = [row for batch in batches for row in batch]
        for query in questions:
            _same(query.run(db), _direct(rows, query), query)
        db.close()


def _old_database(path: Path, rows: list[RequestRow]) -> None:
    """A database as llmp wrote it before the rollups: the requests table alone."""
    db = analytics.connect(path)
    db.executescript("DROP TABLE rollups; DROP TABLE rollup_state;")
    db.executemany(analytics._INSERT, map(analytics._values, rows))
    db.close()


def _all_rollups(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every rollup row; sums of fractions to 6 places (added in another order, they differ
    in the last bits)."""
    rows = db.execute("SELECT * FROM rollups ORDER BY 1, 2, 3, 4, 5, 6, 7").fetchall()
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


@settings(max_examples=10, deadline=None)
@given(old=st.lists(request_rows(), min_size=1, max_size=60), new=st.lists(request_rows()))
def test_an_upgraded_database_gets_rollups_in_resumable_batches(old, new):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "analytics.db"
        _old_database(path, old)
        db = analytics.connect(path)
        assert rollups.backfill_left(db) == len(old)
        analytics.insert(db, new)  # the proxy writes while the old rows wait
        rollups.backfill_step(db, batch=7)
        db.close()
        db = analytics.connect(path)  # a restart in between: it carries on where it was
        while rollups.backfill_step(db, batch=7):
            pass
        assert rollups.backfill_left(db) == 0
        rollups.backfill_step(db, batch=7)  # once done, nothing is added twice

        fresh = analytics.connect(Path(folder) / "fresh.db")
        analytics.insert(fresh, old + new)
        assert _all_rollups(db) == _all_rollups(fresh)
        query = Query(BASE, BASE + SPAN, ("key_id",), (), HOUR)
        _same(query.run(db), _direct(old + new, query), query)


def test_prune_keeps_rows_the_rollups_do_not_have_yet(tmp_path):
    rows = [RequestRow("r", "k1", "u", BASE + i, BASE + i + 5, 200) for i in range(10)]
    _old_database(tmp_path / "analytics.db", rows)
    db = analytics.connect(tmp_path / "analytics.db")
    rollups.backfill_step(db, batch=4)
    assert analytics.prune(db, BASE + 10_000) == 4
    while rollups.backfill_step(db, batch=4):
        pass
    assert analytics.prune(db, BASE + 10_000) == 6
    total = Query(BASE, BASE + DAY, (), (), 0).run(db)
    assert total[0]["requests"] == 10  # the rollups outlive the rows


def test_percentile_reads_within_a_bucket_of_the_exact_value():
    values = [3.0, 10.0, 11.0, 250.0, 1000.0, 1200.0, 30_000.0, 31_000.0, 600_000.0]
    counts = [0] * rollups.BUCKETS
    for value in values:
        counts[rollups.bucket_of(value)] += 1
    for fraction in (0.0, 0.5, 0.95, 0.99):
        exact = sorted(values)[min(len(values) - 1, int(fraction * len(values)))]
        estimate = rollups.percentile(counts, fraction)
        assert estimate is not None
        assert exact / math.sqrt(2) <= estimate <= exact * math.sqrt(2)
    assert rollups.percentile([0] * rollups.BUCKETS, 0.5) is None


def test_cover_splits_a_window_into_edges_hours_and_days():
    start, end = BASE - 90 * 60_000, BASE + 2 * DAY + HOUR + 5
    hours = rollups.cover(start, end, HOUR)
    days = rollups.cover(start, end, DAY)
    for parts in (hours, days):  # contiguous, and exactly the window
        assert parts[0].start == start and parts[-1].end == end
        assert all(a.end + 1 == b.start for a, b in itertools.pairwise(parts))
    assert [p.grain for p in hours] == [0, HOUR, 0]
    assert [p.grain for p in days] == [0, HOUR, DAY, HOUR, 0]
    assert rollups.cover(BASE + 5, BASE + 10, DAY) == [rollups.Segment(0, BASE + 5, BASE + 10)]


def test_cover_reads_whole_weeks_from_monday_where_there_is_no_series():
    monday = rollups.week_of(BASE)
    assert (monday // DAY + 3) % 7 == 0  # 1970-01-01 was a Thursday
    start, end = monday - 2 * DAY - 90 * 60_000, monday + 3 * WEEK + DAY + HOUR + 5
    parts = rollups.cover(start, end, 0)
    assert parts[0].start == start and parts[-1].end == end
    assert all(a.end + 1 == b.start for a, b in itertools.pairwise(parts))
    assert [p.grain for p in parts] == [0, HOUR, DAY, WEEK, DAY, HOUR, 0]
    assert parts[3] == rollups.Segment(WEEK, monday, monday + 3 * WEEK - 1)
    assert WEEK not in [p.grain for p in rollups.cover(start, end, DAY)]
    assert WEEK not in [p.grain for p in rollups.cover(start, end, 0, weeks=False)]


def test_tokens_by_key_and_model_are_read_from_an_index_alone(tmp_path):
    """Cost of every key (a breakdown's, spend by key) reads the KEY_MODELS rows' tokens from
    `rollups_tokens`, never the wide rows of the table."""
    db = analytics.connect(tmp_path / "analytics.db")
    tokens = ("prompt_tokens", "completion_tokens")
    for slot in (0, DAY):
        query = Query(BASE - 5, BASE + SPAN + HOUR, ("key_id", "model"), (), slot, tokens)
        sql, args = query.sql()
        plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args)]
        rollup_reads = [step for step in plan if " rollups " in step]
        assert rollup_reads, plan
        assert all("COVERING INDEX rollups_tokens" in step for step in rollup_reads), plan


def test_a_database_with_rollups_but_not_their_tokens_index_gets_it_on_open(tmp_path):
    rows = [
        RequestRow("r", f"k{i % 3}", "u", BASE + i * HOUR, BASE + i * HOUR + 5, 200)
        for i in range(60)
    ]
    for i, row in enumerate(rows):
        row.model, row.prompt_tokens, row.completion_tokens = f"m{i % 2}", i, 2 * i
    db = analytics.connect(tmp_path / "analytics.db")
    analytics.insert(db, rows)
    db.execute("DROP INDEX rollups_tokens")  # as an older llmp left it
    db.close()
    db = analytics.connect(tmp_path / "analytics.db")
    query = Query(
        BASE, BASE + SPAN, ("key_id", "model"), (), 0, ("prompt_tokens", "completion_tokens")
    )
    sql, args = query.sql()
    plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args))
    assert "COVERING INDEX rollups_tokens" in plan
    _same(query.run(db), _direct(rows, query), query)


@settings(max_examples=10, deadline=None)
@given(old=st.lists(request_rows(), min_size=1, max_size=60), new=st.lists(request_rows()))
def test_rollups_without_weeks_get_them_from_their_days_in_resumable_batches(old, new):
    """A database whose rollups an older llmp made (hours and days): its weeks are built from
    its days, a few weeks at a time, while new rows keep coming; until they are, questions read
    days."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "analytics.db"
        db = analytics.connect(path)
        analytics.insert(db, old)
        db.execute(f"DELETE FROM rollups WHERE grain = {WEEK}")
        db.execute("DELETE FROM rollup_state WHERE name IN ('weeks_done', 'weeks_upto')")
        assert not rollups.weeks_ready(db)  # read before the proxy has opened it: days
        whole = Query(BASE - HOUR, BASE + SPAN + HOUR, ("key_id",), (), 0)
        _same(whole.run(db), _direct(old, whole), whole)
        db.close()
        db = analytics.connect(path)
        assert not rollups.weeks_ready(db)
        assert rollups.backfill_left(db) >= 1
        analytics.insert(db, new)  # the proxy writes while the weeks wait
        _same(whole.run(db), _direct(old + new, whole), whole)  # from the days meanwhile
        rollups.backfill_step(db, weeks=1)
        db.close()
        db = analytics.connect(path)  # a restart in between: it carries on where it was
        while rollups.backfill_step(db, weeks=1):
            pass
        assert rollups.weeks_ready(db) and rollups.backfill_left(db) == 0
        rollups.backfill_step(db)  # once done, nothing is added twice

        fresh = analytics.connect(Path(folder) / "fresh.db")
        analytics.insert(fresh, old + new)
        assert _all_rollups(db) == _all_rollups(fresh)
        assert "grain = 604800000" in whole.sql(True)[0]
        _same(whole.run(db), _direct(old + new, whole), whole)
