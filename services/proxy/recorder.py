"""Analytics rows, written to `data/analytics.db` in small batches off the hot path: the embedded
`shared.usagelog.UsageLog`.

`record()` caps the text a client chose (model, path, method) and the error at MAX_TEXT bytes
each, so a row's size is bounded, and appends it to a list. A background task writes the list
every FLUSH_INTERVAL seconds in one transaction, in a worker thread. If the database cannot be
written (locked, disk full, read-only), the rows stay in memory (up to MAX_PENDING_BYTES, oldest
dropped first and counted) and the next flush tries again. Every use of the connection holds
one lock, and `close()` waits for the task's last write rather than cancelling it (a connection
closed under a write still running in its thread crashes the process), then writes what is
left.

Each batch is added to the rollups in the transaction that inserts it, summed in memory
(shared/rollup_batch.py: a batch has few groups, and summing it in SQL cost as much as the
insert).
Before each use, the database file is checked to be the one opened (its inode): one deleted or
replaced under the recorder is opened again, and said in the log.

The recorder also keeps the database: at start it imports the original llm-proxy's CSV files
once and adds the rows of a database from before the rollups to them (a batch at a time, each in
its own transaction, flushing between them), and every hour it deletes rows older than
ANALYTICS_RETENTION_DAYS and rollups older than ANALYTICS_ROLLUP_RETENTION_DAYS. Its first
upkeep is at start, whatever the clock says (a monotonic clock counts from boot, so "an hour
since 0" would wait for the machine to have been up an hour); `clock` is injected for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from shared import analytics, rollups
from shared.analytics import RequestRow
from shared.apikeys import ApiKey
from shared.usagelog import MAX_TEXT as MAX_TEXT  # named here as before
from shared.usagelog import cap

log = logging.getLogger("proxy.recorder")

FLUSH_INTERVAL = 0.5
MAX_PENDING_BYTES = 32 * 1024 * 1024
ROW_BYTES = 600  # what a pending row costs besides its text (the object, numbers, ids)
PRUNE_INTERVAL = 3600.0


class Recorder:
    def __init__(
        self,
        path: Path,
        retention_days: int,
        known_keys: Callable[[], list[ApiKey]],
        rollup_retention_days: int = 730,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.clock = clock
        self.retention_days = retention_days
        self.rollup_retention_days = rollup_retention_days
        self.known_keys = known_keys
        self.last_error: str | None = None
        self.dropped = 0
        self._pending: list[RequestRow] = []
        self._pending_bytes = 0
        self._db: sqlite3.Connection | None = None
        self._inode: int | None = None  # the database file's, as opened
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()

    def record(self, row: RequestRow) -> None:
        """Queue `row` for the next write (its long texts cut to MAX_TEXT bytes, in place)."""
        cap(row)
        self._pending.append(row)
        self._pending_bytes += _size(row)
        if self._pending_bytes > MAX_PENDING_BYTES:
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest rows until what is pending fits MAX_PENDING_BYTES."""
        drop = 0
        while self._pending_bytes > MAX_PENDING_BYTES and drop < len(self._pending):
            self._pending_bytes -= _size(self._pending[drop])
            drop += 1
        del self._pending[:drop]
        self.dropped += drop

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="analytics-flush")

    async def _run(self) -> None:
        pruned_at: float | None = None
        while not self._stopping.is_set():
            if pruned_at is None or self.clock() - pruned_at >= PRUNE_INTERVAL:
                pruned_at = self.clock()
                await self._maintain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_INTERVAL)
            await self.flush()

    async def _maintain(self) -> None:
        keys = [(k.key, k.id, k.username) for k in self.known_keys()]
        now = time.time()
        cutoff = int((now - self.retention_days * 86400) * 1000)
        rollup_cutoff = int((now - self.rollup_retention_days * 86400) * 1000)

        def backfill_left() -> int:
            return rollups.backfill_left(self._connection())

        def backfill() -> int:
            return rollups.backfill_step(self._connection())

        def work() -> tuple[int, int, int]:
            db = self._connection()
            imported = analytics.import_original_csv(db, self.path.parent / "analytics", keys)
            return imported, analytics.prune(db, cutoff), rollups.prune(db, rollup_cutoff)

        try:
            async with self._lock:
                left = await asyncio.to_thread(backfill_left)
            if left:
                log.info("adding old rows to the rollups", extra={"fields": {"rows": left}})
            while left and not self._stopping.is_set():
                async with self._lock:
                    left = await asyncio.to_thread(backfill)
                await self.flush()
            async with self._lock:
                imported, pruned, pruned_rollups = await asyncio.to_thread(work)
        except (sqlite3.Error, OSError) as exc:
            log.error("analytics upkeep failed", extra={"fields": {"error": exc}})
            return
        if imported or pruned or pruned_rollups:
            fields = {"imported": imported, "pruned": pruned, "pruned_rollups": pruned_rollups}
            log.info("analytics upkeep", extra={"fields": fields})

    async def flush(self) -> None:
        async with self._lock:
            rows, self._pending = self._pending, []
            size, self._pending_bytes = self._pending_bytes, 0
            if not rows:
                return
            try:
                await asyncio.to_thread(self._write, rows)
            except (sqlite3.Error, OSError) as exc:  # OSError: the file cannot even be made
                self._pending[:0] = rows
                self._pending_bytes += size
                self._trim()
                if str(exc) != self.last_error:
                    log.error(
                        "analytics not written; will retry",
                        extra={"fields": {"error": exc, "pending": len(self._pending)}},
                    )
                self.last_error = str(exc)
            else:
                self.last_error = None

    def _connection(self) -> sqlite3.Connection:
        """The open database, opened again if `analytics.db` was deleted or replaced under it
        (rows written to a deleted file are lost to every reader)."""
        if self._db is not None and self._inode != _inode(self.path):
            log.error(
                "analytics.db was deleted or replaced; opening it again",
                extra={"fields": {"path": str(self.path)}},
            )
            self._db.close()
            self._db = None
        if self._db is None:
            self._db = analytics.connect(self.path)
            self._inode = _inode(self.path)
        return self._db

    def _write(self, rows: list[RequestRow]) -> None:
        analytics.insert(self._connection(), rows)

    async def close(self) -> None:
        """Write what is left and close the database."""
        if self._task is not None:
            self._stopping.set()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        async with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _size(row: RequestRow) -> int:
    return ROW_BYTES + len(row.model or "") + len(row.path) + len(row.method) + len(row.error or "")
