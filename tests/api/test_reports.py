"""The analytics routes in process against a real analytics.db: sums from the rollups agree with
the rows at any window, spend at the configured prices, prices refused when malformed, the key
list searched and sorted with each key's usage, and large answers gzipped."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.api.analytics_sqlite import SqliteAnalytics
from services.api.reports import MAX_RECORDS, Window, export_csv
from services.api.request_fields import RECORD
from shared import analytics
from shared.analytics import RequestRow
from shared.apikeys import ApiKey, write_keys

HOUR = 3600_000


@pytest.fixture
def keys(tmp_path: Path) -> list[ApiKey]:
    made = [ApiKey.new(name) for name in ("carol", "alice", "bob")]
    write_keys(tmp_path / "data" / "apikeys.json", made)
    return made


@pytest.fixture
def now() -> int:
    return int(time.time() * 1000)


def _rows(keys: list[ApiKey], now: int) -> list[RequestRow]:
    """Requests every 7 minutes over two days: alice on model-a, bob on model-b, every tenth
    a 502."""
    rows = []
    for i in range(2 * 24 * 60 // 7):
        key = keys[1 + i % 2]
        start = now - i * 7 * 60_000
        failed = i % 10 == 0
        rows.append(
            RequestRow(
                f"req{i:05d}",
                key.id,
                key.username,
                start,
                None if failed else start + 1000 + i,
                502 if failed else 200,
                model="model-a" if key.username == "alice" else "model-b",
                upstream="http://up",
                stream=True,
                ttfb_ms=100.0,
                prompt_tokens=10,
                completion_tokens=None if failed else 90,
            )
        )
    return rows


@pytest.fixture
def rows(tmp_path: Path, keys: list[ApiKey], now: int) -> list[RequestRow]:
    made = _rows(keys, now)
    db = analytics.connect(tmp_path / "data" / "analytics.db")
    analytics.insert(db, made)
    db.close()
    return made


def test_summary_totals_match_the_rows_at_a_ragged_window(api, rows, now):
    start, end = now - 30 * HOUR - 123_457, now - 2 * HOUR + 98_765
    inside = [r for r in rows if start <= r.start_ms <= end]
    for bucket in ("hour", "day"):
        answer = api.get(
            "/api/analytics/summary", params={"startDate": start, "endDate": end, "bucket": bucket}
        ).json()
        assert answer["totals"]["requests"] == len(inside)
        assert answer["totals"]["failures"] == sum(r.end_ms is None for r in inside)
        assert answer["totals"]["completionTokens"] == sum(r.completion_tokens or 0 for r in inside)
        assert sum(p["requests"] for p in answer["series"]) == len(inside)
        assert {k["username"]: k["requests"] for k in answer["keys"]} == {
            name: sum(r.username == name for r in inside) for name in ("alice", "bob")
        }


def test_breakdown_by_model_has_rates_percentiles_and_speed(api, rows, now):
    answer = api.get(
        "/api/analytics/breakdown", params={"by": "model", "startDate": now - 3 * 86400_000}
    ).json()
    a = next(r for r in answer["rows"] if r["value"] == "model-a")
    mine = [r for r in rows if r.model == "model-a"]
    assert a["requests"] == len(mine)
    assert a["errorRate"] == round(sum(r.end_ms is None for r in mine) / len(mine), 4)
    assert 1000 / 1.5 <= a["latencyP50"] <= 1500 * 1.5
    assert 100 / 1.5 <= a["ttfbP95"] <= 100 * 1.5
    # 90 tokens in about a second after the first byte
    assert 60 <= a["tokensPerSecond"] <= 100
    assert a["cost"] is None  # no prices yet
    bad = api.get("/api/analytics/breakdown", params={"by": "colour"})
    assert bad.json() == {"success": False, "message": '"by" must be one of [key, model, upstream]'}


def test_spend_prices_tokens_per_model_and_period(api, rows, keys, now):
    prices = {"currency": "EUR", "models": {"model-a": {"prompt": 1.0, "completion": 2.0}}}
    assert api.put("/api/analytics/prices", json=prices).json()["success"] is True
    assert api.get("/api/analytics/prices").json() == {"success": True, **prices}
    answer = api.get(
        "/api/analytics/spend",
        params={"by": "key", "period": "month", "startDate": now - 86400_000 * 3},
    ).json()
    alice = [r for r in rows if r.username == "alice"]
    expected = sum(10 * 1.0 + (r.completion_tokens or 0) * 2.0 for r in alice) / 1e6
    assert answer["currency"] == "EUR"
    assert answer["total"] == pytest.approx(expected)
    assert answer["unpricedModels"] == ["model-b"]
    by_key: dict[str, Any] = {}
    for period in answer["series"]:
        for row in period["rows"]:
            by_key[row["username"]] = by_key.get(row["username"], 0) + row["cost"]
    assert by_key["alice"] == pytest.approx(expected)
    assert by_key["bob"] == 0
    for period in ("day", "week"):
        other = api.get(
            "/api/analytics/spend", params={"period": period, "startDate": now - 86400_000 * 3}
        ).json()
        assert other["total"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"models": {"m": {"prompt": -1, "completion": 1}}}, '"models.m.prompt" must be a number'),
        (
            {"models": {"m": {"prompt": 1}}},
            '"models.m" must have exactly "prompt" and "completion"',
        ),
        ({"currency": "dollars", "models": {}}, '"currency" must be a three-letter code'),
        ({"models": {"\u0000": {"prompt": 1, "completion": 1}}}, '"models" keys must be printable'),
        ({"models": [], "extra": 1}, '"value" must be an object'),
    ],
)
def test_malformed_prices_are_refused_and_nothing_is_written(api, tmp_path, body, message):
    r = api.put("/api/analytics/prices", json=body)
    assert r.status_code == 400 and r.json()["message"].startswith(message)
    assert not (tmp_path / "data" / "prices.json").exists()


def test_the_key_list_searches_filters_sorts_and_shows_usage(api, rows, keys, tmp_path):
    api.patch(f"/api/keys/{keys[0].id}", json={"enabled": False})
    api.patch(f"/api/keys/{keys[1].id}", json={"budget": {"period": "day", "tokens": 100000}})
    listed = api.get("/api/keys").json()
    assert [k["username"] for k in listed["keys"]] == ["carol", "alice", "bob"]  # as stored
    alice = listed["usage"][keys[1].id]
    today = [
        r
        for r in rows
        if r.username == "alice" and r.start_ms // 86400_000 == rows[0].start_ms // 86400_000
    ]
    assert alice["lastUsed"] == max(r.start_ms for r in rows if r.username == "alice")
    assert alice["requestsToday"] == len(today)
    used = sum(10 + (r.completion_tokens or 0) for r in today)
    assert alice["budget"]["usedTokens"] == used
    assert alice["budget"]["remainingTokens"] == 100000 - used
    assert listed["usage"][keys[0].id] == {
        "lastUsed": None,
        "requestsToday": 0,
        "tokensToday": 0,
        "budget": None,
    }
    names = lambda **p: [k["username"] for k in api.get("/api/keys", params=p).json()["keys"]]  # noqa: E731
    assert names(sort="username") == ["alice", "bob", "carol"]
    assert names(sort="lastUsed", order="desc")[2] == "carol"
    assert names(state="disabled") == ["carol"]
    assert names(state="active", search="Bo") == ["bob"]
    assert names(search=keys[1].id[:8]) == ["alice"]
    bad = api.get("/api/keys", params={"state": "asleep"})
    assert bad.status_code == 400


def test_budgets_are_validated_in_joi_words(api, keys):
    cases = {
        "period": '"budget.period" is required',
        "tokens": '"budget.tokens" must be a positive number',
        "cost": '"budget.cost" must be a number',
    }
    bodies = {
        "period": {"tokens": 5},
        "tokens": {"period": "day", "tokens": -5},
        "cost": {"period": "week", "cost": "lots"},
    }
    for name, body in bodies.items():
        r = api.patch(f"/api/keys/{keys[0].id}", json={"budget": body})
        assert (r.status_code, r.json()["message"]) == (400, cases[name])
    r = api.patch(f"/api/keys/{keys[0].id}", json={"budget": {"period": "year", "extra": 1}})
    assert r.json()["message"] == (
        '"budget.period" must be one of [day, week, month], '
        '"budget" must contain at least one of [tokens, cost], "budget.extra" is not allowed'
    )
    ok = api.patch(f"/api/keys/{keys[0].id}", json={"budget": {"period": "month", "cost": 12.5}})
    assert ok.json()["key"]["budget"] == {"period": "month", "cost": 12.5}
    gone = api.patch(f"/api/keys/{keys[0].id}", json={"budget": None})
    assert "budget" not in gone.json()["key"]


def test_large_answers_are_gzipped_and_the_export_streams_every_row(api, rows, keys, now):
    r = api.get(
        "/api/analytics/requests", params={"limit": 300}, headers={"Accept-Encoding": "gzip"}
    )
    assert r.headers["content-encoding"] == "gzip"
    assert len(r.json()["requests"]) == 300
    small = api.get("/api/analytics/requests/none-such", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    csv = api.get(f"/api/analytics/{keys[1].id}/csv", params={"startDate": now - 3 * 86400_000})
    assert len(csv.text.splitlines()) == 1 + sum(r.username == "alice" for r in rows)
    raw = api.get(
        f"/api/analytics/{keys[1].id}/csv",
        headers={"Accept-Encoding": "gzip"},
        params={"startDate": now - 3 * 86400_000},
    )
    assert raw.text == csv.text  # decoded by the client


def test_records_come_newest_first_in_bounded_pages_that_a_cursor_follows(api, rows, keys, now):
    alice = sorted(r.start_ms for r in rows if r.username == "alice")
    path = f"/api/analytics/{keys[1].id}"
    params: dict[str, Any] = {"startDate": now - 3 * 86400_000, "limit": 50}
    pages = []
    while True:
        answer = api.get(path, params=params).json()
        assert answer["success"] is True
        pages.append([r["startTime"] for r in answer["records"]])
        if answer["nextCursor"] is None:
            break
        params["cursor"] = answer["nextCursor"]
    assert pages[0] == alice[-50:]  # the newest, oldest first, as without a cursor
    assert [t for page in reversed(pages) for t in page] == alice
    assert len(pages) == -(-len(alice) // 50)
    everything = api.get(path).json()  # the default: up to MAX_RECORDS of the last 7 days
    assert [r["startTime"] for r in everything["records"]] == alice
    assert everything["nextCursor"] is None
    assert list(everything["records"][0])[:2] == ["startTime", "endTime"]
    too_many = api.get(path, params={"limit": MAX_RECORDS + 1})
    assert (too_many.status_code, too_many.json()["success"]) == (400, False)
    bad = api.get(path, params={"cursor": "1;DROP TABLE requests"})
    assert bad.json() == {"success": False, "message": "cursor must be one returned as nextCursor"}


def test_the_export_holds_no_read_between_pages_and_sends_every_row_once(tmp_path, rows, keys):
    path = tmp_path / "data" / "analytics.db"
    alice = [r for r in rows if r.username == "alice"]
    chunks = export_csv(SqliteAnalytics(path), keys[1].id, Window(0, 2**62), page=7)
    assert next(chunks) == ",".join(RECORD.names) + "\n"  # before any query
    first = next(chunks)
    # Between two pages a writer can checkpoint the whole WAL: no reader holds a snapshot.
    writer = analytics.connect(path)
    assert writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    later = [replace(r, request_id="later", start_ms=r.start_ms + 10**9) for r in alice[:3]]
    analytics.insert(writer, later)
    # The next pages may be read on another thread (Starlette iterates on a thread pool).
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        rest = other.submit(lambda: list(chunks)).result()
    lines = (first + "".join(rest)).splitlines()
    starts = [int(line.split(",")[0]) for line in lines]
    assert starts == sorted(r.start_ms for r in alice + later)
