"""What a key's recent requests used, read from the usage log in PostgreSQL (DATABASE_URL), to
fill a leaky bucket again when Redis lost it (services/proxy/redis_counters.py).

A bucket of `period` seconds holds each past request's tokens less what has drained since: a
request of T tokens made A seconds ago still holds T * (1 - A / period) of it. The sum over the
key's rows of the last period is the level the bucket would have now (rows not written yet, at
most the last half second's, are missing). Asked once per key when its counters are found
missing in Redis: never on a request's way.

A key's budget (services/proxy/budgets.py) is filled again the same way from its requests since
the period began, by model (`by_model`), on the way of the first request that finds its count
missing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import psycopg

from services.proxy.counters import HistoryUnread

CONNECT_TIMEOUT = 5

_LEVEL = """
SELECT coalesce(sum(
    (coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))
    * (1 - (%(now)s - start_ms)::double precision / %(period)s)
), 0)
FROM llmp_requests
WHERE key_id = %(key)s AND start_ms > %(now)s - %(period)s AND start_ms <= %(now)s
"""


_BY_MODEL = """
SELECT coalesce(model, ''), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)
FROM llmp_requests
WHERE key_id = %(key)s AND start_ms >= %(since)s
GROUP BY 1
"""


class PgUsageHistory:
    def __init__(self, url: str) -> None:
        self.url = url

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection for one read; the database's failures are HistoryUnread."""
        try:
            async with await psycopg.AsyncConnection.connect(
                self.url, connect_timeout=CONNECT_TIMEOUT, autocommit=True
            ) as conn:
                yield conn
        except (psycopg.Error, OSError) as exc:
            raise HistoryUnread(str(exc)) from exc

    async def level(self, key_id: str, period: float) -> float:
        """The tokens a bucket of `period` seconds holds now for `key_id`'s requests."""
        now = int(time.time() * 1000)
        async with self._connection() as conn:
            cursor = await conn.execute(
                _LEVEL, {"now": now, "period": int(period * 1000), "key": key_id}
            )
            row = await cursor.fetchone()
        return float(row[0]) if row else 0.0

    async def by_model(self, key_id: str, since: float) -> list[tuple[str, int, int]]:
        """(model, prompt tokens, completion tokens) of `key_id`'s requests since `since` (a
        UNIX time): what a budget counts, for a store that lost it."""
        async with self._connection() as conn:
            cursor = await conn.execute(_BY_MODEL, {"key": key_id, "since": int(since * 1000)})
            rows = await cursor.fetchall()
        return [(str(m), int(p), int(c)) for m, p, c in rows]
