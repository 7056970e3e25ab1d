"""Where the admin's analytics are read from: the seam between the reports (summaries,
breakdowns, spend, a key's records and CSV, the request log, the key list's usage) and the
database that holds the rows and their rollups.

The reports (services/api/reports.py, request_log.py) compose the answers, one way for every
store; a store only runs their questions: a `shared.rollups.Query`, a key's rows in keyset
order, a page of the request log. `SqliteAnalytics` reads the proxy's `data/analytics.db` (one
box); with DATABASE_URL, `PgAnalytics` reads PostgreSQL, which every replica shares, so that
every replica's admin sees every replica's traffic. Both give the same answers from the same
rows (tests/api/test_analytics_store.py). `for_settings` picks one, as `shared.storage` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shared.settings import Settings

if TYPE_CHECKING:
    from services.api.reports import Window
    from services.api.request_fields import Fields
    from services.api.request_log import LogQuery
    from shared.rollups import Query


@dataclass(frozen=True)
class KeyRows:
    """A key's rows in `window` after `after` (start, id), by start then id (newest first if
    `descending`), `limit` of them: each the values of `fields` (booleans as 0 or 1), or with
    `as_json` its JSON object alone, then its start and id."""

    fields: Fields
    key_id: str
    window: Window
    after: tuple[int, int] | None
    limit: int
    as_json: bool = False
    descending: bool = False

    def statement(self, select: str, table: str) -> tuple[str, list[Any]]:
        """The SQL (with `?` placeholders) selecting `select` from `table`, and its arguments,
        in the order of the index of key and start: nothing to sort."""
        op, direction = ("<", "DESC") if self.descending else (">", "ASC")
        where = "key_id = ? AND start_ms BETWEEN ? AND ?"
        args: list[Any] = [self.key_id, self.window.start, self.window.end]
        if self.after is not None:
            where += f" AND start_ms {op}= ? AND (start_ms {op} ? OR id {op} ?)"
            args += [self.after[0], self.after[0], self.after[1]]
        sql = (
            f"SELECT {select}, start_ms, id FROM {table} WHERE {where} "
            f"ORDER BY start_ms {direction}, id {direction} LIMIT ?"
        )
        return sql, [*args, self.limit]


class StoreUnavailable(Exception):
    """The store cannot be read now (the database is away): the routes answer a 500 saying so."""


class AnalyticsStore(Protocol):
    def sums(self, query: Query) -> list[dict[str, Any]]:
        """The groups of a rollups query (`shared.rollups.Query.run`'s answer)."""

    def key_rows(self, query: KeyRows) -> list[tuple[Any, ...]]:
        """A key's rows, as `query` (a `KeyRows`) describes them."""

    def log_rows(self, query: LogQuery) -> list[tuple[Any, ...]]:
        """A page of the request log, one more row than asked for if there are more: each the
        values of `request_fields.LOG`, then its sort value."""

    def find(self, request_id: str) -> tuple[Any, ...] | None:
        """The newest row with this request id, as `request_fields.LOG`'s values."""

    def day_totals(self, day_ms: int) -> list[tuple[str, int, int, int]]:
        """(key id, requests, prompt tokens, completion tokens) of each key on a UTC day."""

    def last_used(self, key_ids: list[str]) -> dict[str, int]:
        """Each key's last request's start, for keys that were ever used."""

    def key_tokens_by_model(self, key_id: str, since_ms: int) -> list[tuple[str, int, int]]:
        """(model, prompt tokens, completion tokens) of a key since the start of a UTC day."""

    def close(self) -> None:
        """Let go of what is held between questions."""


def for_settings(settings: Settings) -> AnalyticsStore:
    if settings.database_url:
        from services.api.analytics_pg import PgAnalytics

        return PgAnalytics(settings.database_url)
    from services.api.analytics_sqlite import SqliteAnalytics

    return SqliteAnalytics(settings.analytics_db)
