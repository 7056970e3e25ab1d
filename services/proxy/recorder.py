"""Analytics rows, written to `data/analytics.db` in small batches off the hot path.

`record()` only appends to a list. A background task writes the list every FLUSH_INTERVAL
seconds in one transaction, in a worker thread. If the database cannot be written (locked, disk
full, read-only), the rows stay in memory (up to MAX_PENDING, oldest dropped first and counted)
and the next flush tries again. `close()` flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from shared import analytics
from shared.analytics import RequestRow

log = logging.getLogger("proxy.recorder")

FLUSH_INTERVAL = 0.5
MAX_PENDING = 100_000


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_error: str | None = None
        self.dropped = 0
        self._pending: list[RequestRow] = []
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, row: RequestRow) -> None:
        self._pending.append(row)
        if len(self._pending) > MAX_PENDING:
            del self._pending[0]
            self.dropped += 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="analytics-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            rows, self._pending = self._pending, []
            if not rows:
                return
            try:
                await asyncio.to_thread(self._write, rows)
            except sqlite3.Error as exc:
                self._pending[:0] = rows
                del self._pending[:-MAX_PENDING]
                if str(exc) != self.last_error:
                    log.error(
                        "analytics not written; will retry",
                        extra={"fields": {"error": exc, "pending": len(self._pending)}},
                    )
                self.last_error = str(exc)
            else:
                self.last_error = None

    def _write(self, rows: list[RequestRow]) -> None:
        if self._db is None:
            self._db = analytics.connect(self.path)
        analytics.insert(self._db, rows)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()
        if self._db is not None:
            self._db.close()
