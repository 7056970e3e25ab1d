"""The analytics store in PostgreSQL (services/api/analytics_store.py): `llmp_requests` and
`llmp_rollups`, which every replica's proxy writes (shared/pg/usage.py) and the leader of the
usage job keeps rolled up (shared/pg/rollups.py), so every replica's admin sees the same.

The questions are the embedded store's (shared/rollups.py's queries, request_log.LogQuery), in
psycopg's placeholders, each in a connection of its own taken from a few kept open (each
question is one statement in autocommit: a slow CSV download holds nothing between its pages).
A database that cannot be reached is `StoreUnavailable` (a 500 that says so), and the
connection that broke is not kept.
Answers are made the same as SQLite's: sums as int, booleans as 0/1 in the CSV's rows, a
record's JSON object encoded in Python with the same fields and values.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from services.api.analytics_store import KeyRows, StoreUnavailable
from services.api.request_fields import LOG
from services.api.request_log import LogQuery
from shared import rollups
from shared.pg.rollups import TABLES, dialect, numbers_as_sqlite, run
from shared.pg.schema import migrate
from shared.rollups import Query

CONNECT_TIMEOUT = 5
KEEP = 4  # connections kept open between questions
REQUESTS = TABLES.requests


def _json(entry: dict[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)


class PgAnalytics:
    def __init__(self, url: str) -> None:
        self.url = url
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT,
                    application_name="llmp-analytics",
                )
                migrate(conn)
                numbers_as_sqlite(conn)
        except psycopg.Error as exc:
            raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc
        try:
            yield conn
        except psycopg.OperationalError as exc:
            conn.close()  # broken: not kept
            raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc
        with self._lock:
            if len(self._idle) < KEEP:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _all(self, statement: str, args: list[Any]) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(dialect(statement).encode(), args).fetchall()

    def sums(self, query: Query) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return run(conn, query)

    def key_rows(self, query: KeyRows) -> list[tuple[Any, ...]]:
        rows = self._all(*query.statement(query.fields.select, REQUESTS))
        if query.as_json:
            return [(_json(query.fields.entry(row[:-2])), *row[-2:]) for row in rows]
        return [tuple(int(v) if isinstance(v, bool) else v for v in row) for row in rows]

    def log_rows(self, query: LogQuery) -> list[tuple[Any, ...]]:
        return self._all(*query.statement(REQUESTS))

    def find(self, request_id: str) -> tuple[Any, ...] | None:
        rows = self._all(
            f"SELECT {LOG.select} FROM {REQUESTS} WHERE request_id = ? "
            "ORDER BY start_ms DESC, id DESC LIMIT 1",
            [request_id],
        )
        return rows[0] if rows else None

    def day_totals(self, day_ms: int) -> list[tuple[str, int, int, int]]:
        return [
            (key_id, int(requests), int(prompt), int(completion))
            for key_id, requests, prompt, completion in self._all(
                "SELECT key_id, requests, prompt_tokens, completion_tokens FROM llmp_rollups "
                "WHERE grain = ? AND level = ? AND period_ms = ?",
                [rollups.DAY, rollups.KEYS, day_ms],
            )
        ]

    def last_used(self, key_ids: list[str]) -> dict[str, int]:
        rows = self._all(
            "SELECT DISTINCT ON (key_id) key_id, last_ms FROM llmp_rollups "
            "WHERE grain = ? AND level = ? AND key_id = ANY(?) "
            "ORDER BY key_id, period_ms DESC",
            [rollups.DAY, rollups.KEYS, key_ids],
        )
        return {key_id: int(last) for key_id, last in rows}

    def key_tokens_by_model(self, key_id: str, since_ms: int) -> list[tuple[str, int, int]]:
        return [
            (model, int(prompt), int(completion))
            for model, prompt, completion in self._all(
                "SELECT model, SUM(prompt_tokens), SUM(completion_tokens) FROM llmp_rollups "
                "WHERE grain = ? AND level = ? AND key_id = ? AND period_ms >= ? GROUP BY model",
                [rollups.DAY, rollups.KEY_MODELS, key_id, since_ms],
            )
        ]
