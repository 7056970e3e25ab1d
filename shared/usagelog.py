"""The usage log's writing side, as every implementation offers it: one row per request.

`record()` is called on the proxy's hot path: it never blocks and never fails. It caps the texts
a client chose (model, the model asked of the upstream, end user, path, method) and the error at
MAX_TEXT bytes each (`cap`), so that a row's size is bounded, and queues the row; rows are
written in batches by a background task (`start()`), and `close()` writes what is left. What could not be
written yet is counted in `pending`, what had to be given up in `dropped`, and the last failure
is `last_error` (None once writing works again).

The embedded implementation is `data/analytics.db` (the proxy's `Recorder`); with DATABASE_URL,
PostgreSQL (`shared.pg.usage`). `shared.storage` picks one.
"""

from __future__ import annotations

from typing import Protocol

from shared.analytics import RequestRow


class UsageLog(Protocol):
    @property
    def last_error(self) -> str | None: ...

    @property
    def pending(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    def record(self, row: RequestRow) -> None: ...

    async def start(self) -> None: ...

    async def flush(self) -> None:
        """Write what is pending now (what cannot be written stays pending)."""

    async def close(self) -> None:
        """Write what is left and let go of the store."""


MAX_TEXT = 512  # bytes of each text a client chose that a row keeps


def cap(row: RequestRow) -> None:
    """Cut `row`'s long texts to MAX_TEXT bytes each, in place."""
    row.model, row.error = _capped(row.model), _capped(row.error)
    row.upstream_model, row.end_user = _capped(row.upstream_model), _capped(row.end_user)
    row.path, row.method = _capped(row.path) or "", _capped(row.method) or ""


def _capped(text: str | None) -> str | None:
    """`text` cut to at most MAX_TEXT bytes of UTF-8 (on a character boundary)."""
    if text is None or len(text) <= MAX_TEXT // 4:
        return text
    encoded = text.encode(errors="replace")
    if len(encoded) <= MAX_TEXT:
        return text
    return encoded[:MAX_TEXT].decode(errors="ignore")
