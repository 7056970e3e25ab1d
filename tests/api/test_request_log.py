"""The request log's keyset pages: every row once, in order, ties on the start time included,
while new rows arrive; every sort through its ties and NULLs, read in its index's order; filters
on outcome and status."""

from __future__ import annotations

import random

import pytest

from services.api import request_log
from services.api.analytics_sqlite import SqliteAnalytics
from services.api.reports import Window
from shared import analytics
from shared.analytics import RequestRow

T = 1_800_000_000_000


def _rows(count: int, first: int = 0) -> list[RequestRow]:
    # Three requests per millisecond: pages must break ties by id.
    return [
        RequestRow(
            f"r{i}",
            "k1",
            "alice",
            T + i // 3,
            None if i % 5 == 0 else T + i // 3 + 9,
            429 if i % 5 == 0 else 200,
        )
        for i in range(first, first + count)
    ]


def _walk(path, order: str, limit: int, during=None, sort="time", **filters) -> list[str]:
    walked: list[str] = []
    cursor = None
    window = Window(T - 1, T + 10_000)
    while True:
        store, chosen = SqliteAnalytics(path), request_log.Filters(**filters)
        page = request_log.page(store, window, chosen, order, limit, cursor, sort)
        walked += [e["requestId"] for e in page.entries]
        if during is not None:
            during()
        if page.next_cursor is None:
            return walked
        cursor = page.next_cursor


def test_pages_give_every_row_once_in_order_while_rows_arrive(tmp_path):
    path = tmp_path / "analytics.db"
    db = analytics.connect(path)
    rows = _rows(31)
    analytics.insert(db, rows)
    expected = [
        r.request_id for r in sorted(rows, key=lambda r: (r.start_ms, int(r.request_id[1:])))
    ]
    assert _walk(path, "asc", 4) == expected
    arrivals = iter(range(100, 130, 3))

    def arrive() -> None:  # newer requests written between pages
        analytics.insert(db, _rows(3, next(arrivals, 200)))

    assert _walk(path, "desc", 4, during=arrive) == expected[::-1]
    now = _walk(path, "asc", 500)
    assert now[: len(expected)] == expected and len(now) > len(expected)
    failed = _walk(path, "desc", 2, outcome="rate_limited")
    assert failed == [r for r in now[::-1] if int(r[1:]) % 5 == 0]
    assert _walk(path, "asc", 50, status=429) == failed[::-1]
    assert _walk(path, "asc", 50, outcome="ok", status=429) == []


def test_a_request_is_found_by_the_id_its_client_saw(tmp_path):
    path = tmp_path / "analytics.db"
    db = analytics.connect(path)
    analytics.insert(db, _rows(6))
    found = request_log.find(SqliteAnalytics(path), "r4")
    assert found is not None
    assert (found["requestId"], found["durationMs"], found["outcome"]) == ("r4", 9, "ok")
    assert request_log.find(SqliteAnalytics(path), "r99") is None


def test_a_request_shows_the_model_its_upstream_was_asked_for(tmp_path):
    path = tmp_path / "analytics.db"
    db = analytics.connect(path)
    row = RequestRow("aliased", "k1", "alice", T, model="chat", upstream_model="llama-3-70b")
    analytics.insert(db, [row])
    found = request_log.find(SqliteAnalytics(path), "aliased")
    assert found is not None
    assert (found["model"], found["upstreamModel"]) == ("chat", "llama-3-70b")


def _measured(count: int, seed: int) -> list[RequestRow]:
    """Rows whose every measure has many ties and some NULLs, and starts that tie too."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        start = T + rng.randrange(20)
        failed = rng.random() < 0.3
        rows.append(
            RequestRow(
                f"m{i}",
                rng.choice(["k1", "k2"]),
                "alice",
                start,
                None if failed else start + rng.choice([5, 9, 9, 40]),
                rng.choice([429, 502, 0]) if failed else 200,
                ttfb_ms=rng.choice([None, 1.5, 2.25, 2.25, 7.0]),
                prompt_tokens=rng.choice([None, 3, 5]),
                completion_tokens=None if failed else rng.choice([0, 2, 4]),
            )
        )
    return rows


def _sort_value(sort: str, row: RequestRow) -> float:
    # What docs/analytics.md promises: a row without the measure sorts below every value.
    match sort:
        case "latency":
            return -1 if row.end_ms is None else row.end_ms - row.start_ms
        case "ttfb":
            return -1 if row.ttfb_ms is None else row.ttfb_ms
        case "tokens":
            return (row.prompt_tokens or 0) + (row.completion_tokens or 0)
        case "status":
            return row.status
    return row.start_ms


@pytest.mark.parametrize("sort", request_log.SORTS)
def test_every_sort_pages_every_row_once_in_order_through_ties(tmp_path, sort):
    path = tmp_path / "analytics.db"
    db = analytics.connect(path)
    rows = _measured(120, seed=len(sort))
    analytics.insert(db, rows)
    ids = {r.request_id: i + 1 for i, r in enumerate(rows)}  # the table's ids, in insert order
    ascending = sorted(rows, key=lambda r: (_sort_value(sort, r), r.start_ms, ids[r.request_id]))
    expected = [r.request_id for r in ascending]
    for limit in (1, 7, 500):
        assert _walk(path, "asc", limit, sort=sort) == expected
        assert _walk(path, "desc", limit, sort=sort) == expected[::-1]
    by_id = {r.request_id: r for r in rows}
    k2 = [r for r in expected if by_id[r].key_id == "k2"]
    # A filter's index or the sort's, whichever reads fewer rows (a small page: the sort's; a
    # page of them all: the filter's): the same rows in the same order.
    assert _walk(path, "desc", 3, sort=sort, key_id="k2") == k2[::-1]
    assert _walk(path, "asc", 500, sort=sort, key_id="k2") == k2
    limited = [r for r in expected if by_id[r].status == 429]
    assert _walk(path, "desc", 2, sort=sort, outcome="rate_limited") == limited[::-1]
    assert _walk(path, "asc", 3, sort=sort, status=429, key_id="k2") == [
        r for r in limited if by_id[r].key_id == "k2"
    ]


def test_a_cursor_is_refused_for_another_sort_or_when_made_up(tmp_path):
    path = tmp_path / "analytics.db"
    analytics.insert(analytics.connect(path), _measured(10, seed=1))
    window = Window(T - 1, T + 10_000)
    store = SqliteAnalytics(path)
    first = request_log.page(store, window, request_log.Filters(), limit=2, sort="latency")
    assert first.next_cursor is not None and first.next_cursor.startswith("latency:")
    for cursor, sort in (
        (first.next_cursor, "ttfb"),
        (first.next_cursor, "time"),
        ("latency:1:2", "latency"),  # no value
        ("time:5:1:2", "time"),  # a value for time
        ("latency:1;DROP TABLE requests:1:2", "latency"),
    ):
        with pytest.raises(request_log.CursorError):
            request_log.page(store, window, request_log.Filters(), cursor=cursor, sort=sort)
