"""The request log's keyset pages: every row once, in order, ties on the start time included,
while new rows arrive; filters on outcome and status."""

from __future__ import annotations

from services.api import request_log
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


def _walk(path, order: str, limit: int, during=None, **filters) -> list[str]:
    walked: list[str] = []
    cursor = None
    window = Window(T - 1, T + 10_000)
    while True:
        page = request_log.page(path, window, request_log.Filters(**filters), order, limit, cursor)
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
    found = request_log.find(path, "r4")
    assert found is not None
    assert (found["requestId"], found["durationMs"], found["outcome"]) == ("r4", 9, "ok")
    assert request_log.find(path, "r99") is None
