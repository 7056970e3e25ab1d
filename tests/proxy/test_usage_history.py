"""services/proxy/usage_history.py: what a key's requests of the last day still hold in a leaky
bucket, read from the usage log in PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import psycopg

from services.proxy.usage_history import PgUsageHistory
from shared.analytics import RequestRow
from shared.pg.schema import migrate
from shared.pg.usage import write_rows

HOUR_MS = 3_600_000


def test_each_request_holds_its_tokens_less_what_drained_since(database_url):
    now_ms = int(time.time() * 1000)
    rows = [
        RequestRow(
            request_id=f"r{n}",
            key_id=key,
            username="user",
            start_ms=now_ms - hours * HOUR_MS,
            status=200,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        for n, (key, hours, prompt, completion) in enumerate(
            (
                ("a", 12, 1000, 1000),  # half drained: 1000
                ("a", 6, 400, None),  # a quarter drained: 300 (no completion counted)
                ("a", 25, 9000, 0),  # older than the day: drained
                ("b", 1, 5000, 0),  # another key's
            )
        )
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        write_rows(conn, rows, set())
    history = PgUsageHistory(database_url)
    level = asyncio.run(history.level("a", 86400.0))
    assert 1299 <= level <= 1300  # a few milliseconds drained since
    assert asyncio.run(history.level("nobody", 86400.0)) == 0.0
