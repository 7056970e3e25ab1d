"""The analytics stores (services/api/analytics_store.py) give the same answers from the same
rows: every report (summaries, breakdowns, spend, a key's records and CSV, the request log in
every sort and filter, a request found by id, the key list's usage and budgets) is asked of the
embedded database and of PostgreSQL, each holding the same rows written as the proxy writes them
(SQLite's recorder; PostgreSQL's batches, folded into its rollups by the leader's job), and
SQLite's answer is the oracle. Only the row ids differ: each database numbers its rows itself
(PostgreSQL in the order a batch's rows reach the table), so they are left out of the
comparison, in the entries and in the cursors that name a row.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from services.api import reports, request_log, sessions
from services.api.analytics_pg import PgAnalytics
from services.api.analytics_sqlite import SqliteAnalytics
from services.api.analytics_store import AnalyticsStore
from services.api.app import create_app
from services.api.reports import Window
from shared import analytics
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, Budget
from shared.pg import rollups as pg_rollups
from shared.pg.schema import migrate
from shared.pg.usage import write_rows
from shared.prices import Price, Prices
from shared.rollups import DAY, HOUR
from tests.conftest import make_settings

# Monday 2 November 2026, 00:00 UTC; the rows span 23 days from 13:17 the day before.
BASE = 1_793_577_600_000
START = BASE - 11 * HOUR + 17 * 60_000
SPAN = 23 * DAY
KEYS = [ApiKey.new(name) for name in ("alice", "bob", "carol", "dave")]
MODELS = ["llama", "qwen", "mistral", None]
UPSTREAMS = ["http://a:8000", "http://b:8000", None]
PRICES = Prices(models={"llama": Price(prompt=0.5, completion=1.5), "qwen": Price(1.0, 2.0)})


def make_rows(count: int, seed: int = 7) -> list[RequestRow]:
    rng = random.Random(seed)
    starts = sorted(START + rng.randrange(SPAN) for _ in range(count))
    rows = []
    for n, start in enumerate(starts):
        key = KEYS[rng.randrange(len(KEYS) - 1)]  # the last key is never used
        kind = rng.random()
        stream = rng.random() < 0.5
        ok = kind < 0.85
        ttfb = float(rng.randrange(1, 3000)) if ok or kind < 0.9 else None
        rows.append(
            RequestRow(
                request_id=f"req-{n % (count - 5)}",  # a few ids seen twice
                key_id=key.id,
                username=key.username,
                start_ms=start,
                end_ms=start + rng.randrange(5, 60_000) if ok else None,
                status=200 if ok else rng.choice([429, 400, 500, 502, 0]),
                method="POST",
                path=rng.choice(["/v1/chat/completions", "/v1/embeddings"]),
                model=rng.choice(MODELS),
                upstream=rng.choice(UPSTREAMS),
                stream=stream,
                ttfb_ms=ttfb,
                prompt_tokens=rng.randrange(0, 4000) if rng.random() < 0.9 else None,
                completion_tokens=rng.randrange(0, 2000) if ok else None,
                bytes_in=rng.randrange(100, 10_000),
                bytes_out=rng.randrange(100, 100_000),
                error=None if ok else rng.choice(["upstream timeout", "=cmd|'/c calc'!A1", "é"]),
                queue_ms=float(rng.randrange(0, 50)) if rng.random() < 0.3 else None,
                usage_estimated=rng.random() < 0.1,
                end_user=rng.choice([None, "u1", "u2"]),
                upstream_model=rng.choice([None, "llama-3.1-8b"]),
            )
        )
    return rows


@pytest.fixture(scope="module")
def stores(postgres, tmp_path_factory) -> Iterator[tuple[AnalyticsStore, AnalyticsStore]]:
    rows = make_rows(3000)
    path = tmp_path_factory.mktemp("analytics") / "analytics.db"
    db = analytics.connect(path)
    for first in range(0, len(rows), 250):
        analytics.insert(db, rows[first : first + 250])
    db.close()
    url = postgres.new_database()
    with psycopg.connect(url) as conn:
        migrate(conn)
        days: set[int] = set()
        for first in range(0, len(rows), 250):
            write_rows(conn, rows[first : first + 250], days)
        while pg_rollups.fold(conn, 700):  # several folds, as the leader's job makes them
            pass
        assert pg_rollups.queued(conn) == 0
    pg = PgAnalytics(url)
    yield SqliteAnalytics(path), pg
    pg.close()


WINDOWS = [
    Window(START - DAY, START + SPAN + DAY),  # everything
    Window(BASE + 3 * HOUR + 1234, BASE + 9 * DAY + 5 * HOUR + 17),  # ragged at both ends
    Window(BASE + 2 * DAY, BASE + 2 * DAY + HOUR - 1),  # one hour
    Window(BASE + 5 * DAY + 10, BASE + 5 * DAY + 500_000),  # inside an hour: rows alone
    Window(BASE + 40 * DAY, BASE + 41 * DAY),  # nothing
]


def without_ids(page: request_log.Page) -> tuple[list[dict[str, Any]], str | None]:
    cursor = None if page.next_cursor is None else page.next_cursor.rsplit(":", 1)[0]
    return [{k: v for k, v in e.items() if k != "id"} for e in page.entries], cursor


def same(stores, report, *args) -> Any:
    """What both stores answer to `report(store, *args)`, when they answer the same."""
    embedded, pg = stores
    expected = report(embedded, *args)
    assert report(pg, *args) == expected
    return expected


def csv_of(store: AnalyticsStore, key_id: str) -> str:
    return "".join(reports.export_csv(store, key_id, WINDOWS[0], 101))


@pytest.mark.parametrize("window", WINDOWS)
def test_summaries_are_the_same(stores, window):
    for key_id in (None, KEYS[0].id, KEYS[3].id):
        for bucket in reports.BUCKETS:
            answer = same(stores, reports.summary, key_id, window, bucket)
    assert answer["totals"]["requests"] == 0  # the last key's: none, and still the same
    if window == WINDOWS[0]:
        everything = same(stores, reports.summary, None, window, "day")
        assert everything["totals"]["requests"] == 3000


@pytest.mark.parametrize("window", WINDOWS[:3])
def test_breakdowns_are_the_same(stores, window):
    for by in reports.BREAKDOWNS:
        for filters in (
            {},
            {"key_id": KEYS[1].id},
            {"model": "llama"},
            {"upstream": "http://b:8000", "model": "qwen"},
        ):
            for prices in (Prices(), PRICES):
                rows = same(stores, reports.breakdown, by, window, filters, prices)
                if not filters and window == WINDOWS[0]:
                    assert rows and rows[0]["requests"] > 0


@pytest.mark.parametrize("window", WINDOWS[:2])
def test_spend_is_the_same(stores, window):
    for by in reports.SPEND_BY:
        for period in reports.PERIODS:
            for key_id in (None, KEYS[2].id):
                answer = same(stores, reports.spend, by, period, window, key_id, PRICES)
                assert answer["series"]


def test_records_and_their_pages_are_the_same(stores):
    window = WINDOWS[1]
    for key in KEYS:
        cursors: list[str | None] = [None, None]  # each store's own
        pages = 0
        while True:
            embedded, pg = (
                reports.records(s, key.id, window, 97, cursor)
                for s, cursor in zip(stores, cursors, strict=True)
            )
            assert [json.loads(r) for r in pg.json] == [json.loads(r) for r in embedded.json]
            assert (pg.next_cursor is None) == (embedded.next_cursor is None)
            pages += 1
            cursors = [embedded.next_cursor, pg.next_cursor]
            if embedded.next_cursor is None:
                break
        assert pages > 1 or key is KEYS[3]


def test_the_csv_export_is_the_same(stores):
    for key in KEYS[:2]:
        exported = same(stores, csv_of, key.id)
        assert exported.count("\n") > 500
        assert "'=cmd" in exported  # a formula-like cell defused, in both


@pytest.mark.parametrize("sort", request_log.SORTS)
@pytest.mark.parametrize("order", request_log.ORDERS)
def test_the_request_log_pages_the_same_in_every_order(stores, sort, order):
    window = WINDOWS[1]
    for filters in (
        request_log.Filters(),
        request_log.Filters(key_id=KEYS[0].id),
        request_log.Filters(outcome="rate_limited"),
        request_log.Filters(model="qwen", stream=True),
        request_log.Filters(status=200, upstream="http://a:8000", path="/v1/embeddings"),
        request_log.Filters(outcome="ok", stream=False),
    ):
        cursors: list[str | None] = [None, None]  # each store's own
        seen = 0
        for _ in range(100):
            embedded, pg = (
                request_log.page(s, window, filters, order, 173, cursor, sort)
                for s, cursor in zip(stores, cursors, strict=True)
            )
            assert without_ids(pg) == without_ids(embedded)
            seen += len(embedded.entries)
            cursors = [embedded.next_cursor, pg.next_cursor]
            if embedded.next_cursor is None:
                break
        assert cursors == [None, None]
        assert seen > 0


def test_a_request_is_found_the_same(stores):
    for request_id in ("req-0", "req-1", "req-1500", "nothing"):
        embedded, pg = (request_log.find(s, request_id) for s in stores)
        assert (embedded is None) == (request_id == "nothing")
        if embedded is not None and pg is not None:
            del embedded["id"], pg["id"]
        assert pg == embedded


def test_the_key_lists_usage_and_budgets_are_the_same(stores):
    keys = [
        replace(KEYS[0], budget=Budget("day", tokens=100_000)),
        replace(KEYS[1], budget=Budget("week", cost=5.0)),
        replace(KEYS[2], budget=Budget("month", tokens=10**7, cost=100.0)),
        KEYS[3],
    ]
    for now in (BASE + 4 * DAY + 7 * HOUR, BASE + 21 * DAY, BASE + 60 * DAY):
        usage = same(stores, reports.key_usage, keys, PRICES, now)
    assert usage[KEYS[0].id]["lastUsed"] is not None
    assert usage[KEYS[3].id]["lastUsed"] is None


def test_the_routes_say_so_when_the_database_is_away(tmp_path):
    """No server at the URL (a folder without a socket): every analytics route answers a 500
    in the original's shape that says why."""
    url = f"postgresql://llmp@/llmp?host={tmp_path}"
    settings = make_settings(tmp_path, log_level="CRITICAL", jwt_secret="k" * 40, database_url=url)
    token = sessions.for_settings(settings).issue("admin")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as api:
        for path in (
            "/api/analytics/summary",
            "/api/analytics/breakdown",
            "/api/analytics/spend",
            "/api/analytics/requests",
            "/api/analytics/requests/abc",
            f"/api/analytics/{KEYS[0].id}",
        ):
            r = api.get(path)
            assert r.status_code == 500, (path, r.text)
            assert r.json() == {
                "success": False,
                "message": "Failed to retrieve analytics: the database is unreachable",
            }
