"""The usage log's conformance suite: every case runs against each implementation of
`shared.usagelog.UsageLog` (SQLite in data/, and PostgreSQL in a throwaway cluster)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import psycopg
import pytest

from services.proxy.recorder import Recorder
from shared.analytics import RequestRow
from shared.usagelog import MAX_TEXT, UsageLog, cap


def row(n: int, **fields) -> RequestRow:
    now = int(time.time() * 1000)
    return RequestRow(request_id=f"r{n}", key_id="k" * 32, username="alice", start_ms=now, **fields)


@pytest.fixture(params=["embedded", "postgres"])
def log_and_rows(request, tmp_path):
    """(a UsageLog, a function listing the (request_id, model) of what it wrote)"""
    if request.param == "embedded":
        db = tmp_path / "analytics.db"

        def written() -> list[tuple[str, str | None]]:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT request_id, model FROM requests ORDER BY id").fetchall()

        return Recorder(db, 30, lambda: []), written
    from shared.pg.usage import PgUsageLog

    url = request.getfixturevalue("database_url")

    def from_pg() -> list[tuple[str, str | None]]:
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT request_id, model FROM llmp_requests").fetchall()
        return sorted(rows, key=lambda r: int(r[0][1:]))

    return PgUsageLog(url, tmp_path / "outbox", 30), from_pg


def test_every_row_recorded_is_written_once_by_close(log_and_rows):
    usage: UsageLog = log_and_rows[0]

    async def scenario() -> None:
        await usage.start()
        for n in range(300):
            usage.record(row(n, model="m", status=200))
            if n % 100 == 99:
                await asyncio.sleep(0.6)  # a flush or so between bursts
        await usage.close()

    asyncio.run(scenario())
    assert log_and_rows[1]() == [(f"r{n}", "m") for n in range(300)]
    assert usage.pending == 0 and usage.dropped == 0 and usage.last_error is None


def test_a_long_text_a_client_chose_is_cut(log_and_rows):
    usage: UsageLog = log_and_rows[0]

    async def scenario() -> None:
        await usage.start()
        usage.record(row(1, model="é" * 1000))
        await usage.close()

    asyncio.run(scenario())
    [(_, model)] = log_and_rows[1]()
    assert model == "é" * (MAX_TEXT // 2)


def test_every_text_a_client_chose_is_capped():
    long = "é" * 5000
    r = row(1, model=long, upstream_model=long, end_user=long, error=long, path=long, method=long)
    cap(r)
    texts = (r.model, r.upstream_model, r.end_user, r.error, r.path, r.method)
    assert all(t is not None and len(t.encode()) == MAX_TEXT for t in texts)
