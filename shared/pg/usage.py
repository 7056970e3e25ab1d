"""The usage log in PostgreSQL (`shared.usagelog.UsageLog`): one row per request, from every
proxy worker of every replica.

`record()` only appends to a list. Every FLUSH_INTERVAL seconds a background task writes the list
in a worker thread: COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING into
`llmp_requests` (so a batch sent twice adds nothing), creating the day's partition first if it
is new, all in one transaction. When the database cannot take the batch, it goes to the worker's
outbox on its own disk (`shared.pg.outbox`) and `last_error` says why; once a write succeeds
again, the outbox is drained, its own rows and those of any worker that died with rows waiting.
Only if the outbox cannot be written either do rows stay in memory, up to MAX_PENDING (the
oldest dropped beyond it, and counted).

Upkeep, by the one worker of all replicas that leads the "usage" job (`shared.leader`; the
others skip it), in a background task of its own: every FLUSH_INTERVAL, the rows queued for
the rollups are folded into them (`shared.pg.rollups`); at start and then hourly, the day
partitions older than ANALYTICS_RETENTION_DAYS are dropped whole, and the rollups' periods
older than their own retention deleted; before that, the original llm-proxy's CSV analytics
files (`data/analytics/<md5 of key>.csv`, which `shared.analytics.import_original_csv` imports on
one box) are imported, each file once among every replica (`import_original_csv`). All of it is
done through the leader's connection, so a leader whose connection died can commit none of it
once another has taken over, and none of it holds up the worker's own writes (a long fold, after
an upgrade queued every row, included).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from shared.analytics import COLUMNS, RequestRow, original_csv_path, original_rows
from shared.apikeys import KeyFileError
from shared.pg import rollups
from shared.pg.keys import keys_in
from shared.pg.leader import PgLeader
from shared.pg.outbox import Outbox
from shared.pg.schema import LOCK_PARTITIONS, migrate
from shared.usagelog import cap

log = logging.getLogger("usage.pg")

FLUSH_INTERVAL = 0.5
RETENTION_INTERVAL = 3600.0
FOLDS_PER_ROUND = 10  # batches of rollups.FOLD_BATCH rows folded per round of the upkeep, at most
DRAIN_BATCH = 5000
MAX_PENDING = 200_000  # rows kept in memory when neither the database nor the outbox takes them
CONNECT_TIMEOUT = 5
DAY_MS = 86_400_000
PARTITION_PREFIX = "llmp_requests_"

_COLUMNS = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)


def partition_name(day: int) -> str:
    """The partition of day `day` (days since the epoch, UTC): llmp_requests_YYYYMMDD."""
    return PARTITION_PREFIX + datetime.fromtimestamp(day * 86400, UTC).strftime("%Y%m%d")


def write_rows(conn: psycopg.Connection[Any], rows: list[RequestRow], days: set[int]) -> int:
    """Add `rows` to the log in one transaction, those already there left out; how many were
    added. `days` are the days whose partition is known to exist (updated)."""
    with conn.transaction():
        for day in sorted({row.start_ms // DAY_MS for row in rows} - days):
            _partition(conn, day)
            days.add(day)
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS llmp_requests_in ON COMMIT DELETE ROWS"
                " AS SELECT {} FROM llmp_requests WITH NO DATA"
            ).format(_COLUMNS)
        )
        with (
            conn.cursor() as cur,
            cur.copy(sql.SQL("COPY llmp_requests_in ({}) FROM STDIN").format(_COLUMNS)) as copy,
        ):
            for row in rows:
                copy.write_row([getattr(row, name) for name in COLUMNS])
        added = conn.execute(
            sql.SQL(
                "INSERT INTO llmp_requests ({0}) SELECT {0} FROM llmp_requests_in"
                " ON CONFLICT DO NOTHING"
            ).format(_COLUMNS)
        )
        return added.rowcount


def import_original_csv(
    conn: psycopg.Connection[Any], folder: Path, keys: Iterable[tuple[str, str, str]]
) -> int:
    """Import the original's files of `keys` ((key, id, username)) in `folder` that no replica
    imported yet; the rows added.

    A file is claimed and its rows written in one transaction: its name goes into
    `llmp_csv_imports` (its primary key), so a replica that finds it there leaves the file
    alone, and of two claiming it at once the second waits, then finds it taken. The rows keep
    the original's starts: written again (the claim removed by hand), they add nothing.
    """
    imported = 0
    days: set[int] = set()
    for secret, key_id, username in keys:
        path = original_csv_path(folder, secret)
        if not path.exists():
            continue
        rows = list(original_rows(path, key_id, username))
        with conn.transaction():
            claimed = conn.execute(
                "INSERT INTO llmp_csv_imports (name, rows) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING RETURNING name",
                (path.name, len(rows)),
            ).fetchone()
            if claimed is not None and rows:
                imported += write_rows(conn, rows, days)
    return imported


def _partition(conn: psycopg.Connection[Any], day: int) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_PARTITIONS,))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF llmp_requests FOR VALUES FROM ({}) TO ({})"
        ).format(
            sql.Identifier(partition_name(day)),
            sql.Literal(day * DAY_MS),
            sql.Literal((day + 1) * DAY_MS),
        )
    )


class PgUsageLog:
    def __init__(
        self,
        url: str,
        outbox: Path,
        retention_days: int,
        clock: Callable[[], float] = time.monotonic,
        rollup_retention_days: int = 730,
        original_csv: Path | None = None,
    ) -> None:
        """`original_csv`: the folder of the original's CSV files to import (data/analytics)."""
        self.url = url
        self.original_csv = original_csv
        self.retention_days = retention_days
        self.rollup_retention_days = rollup_retention_days
        self.leader = PgLeader(url, "usage", "llmp-usage-leader")
        self.clock = clock
        self.outbox = Outbox(outbox)
        self.last_error: str | None = None
        self.dropped = 0
        self._pending: list[RequestRow] = []
        self._conn: psycopg.Connection[Any] | None = None
        self._days: set[int] = set()  # days whose partition exists
        self._lock = asyncio.Lock()  # the writing connection, the pending rows, the outbox
        self._keeping = asyncio.Lock()  # the leader and its connection
        self._leader_schema: object | None = None  # the leader connection migrated last
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pending(self) -> int:
        """Rows not in the database yet: in memory and in the outbox."""
        return len(self._pending) + self.outbox.rows

    def record(self, row: RequestRow) -> None:
        cap(row)
        self._pending.append(row)
        if len(self._pending) > MAX_PENDING:
            drop = len(self._pending) - MAX_PENDING
            del self._pending[:drop]
            self.dropped += drop

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="usage-flush"),
            asyncio.create_task(self._keep_up(), name="usage-upkeep"),
        ]

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_INTERVAL)
            await self.flush()

    async def _keep_up(self) -> None:
        kept_at: float | None = None
        while not self._stopping.is_set():
            due = kept_at is None or self.clock() - kept_at >= RETENTION_INTERVAL
            if await self.keep(retention=due) and due:
                kept_at = self.clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_INTERVAL)

    async def keep(self, retention: bool = True) -> bool:
        """The upkeep, if this worker leads it (see the module): fold the queued rows into the
        rollups and, with `retention`, drop what is older than the retentions. Whether it led
        (the upkeep task calls this every FLUSH_INTERVAL, with `retention` at start and then
        every RETENTION_INTERVAL)."""
        async with self._keeping:
            return await asyncio.to_thread(self._keep, retention)

    async def flush(self) -> None:
        async with self._lock:
            rows, self._pending = self._pending, []
            if not rows and not self.outbox.rows and not self._others_waiting():
                return
            try:
                await asyncio.to_thread(self._write_all, rows)
            except (psycopg.Error, OSError) as exc:  # OSError: an outbox file unreadable
                self._failed(exc)
                try:
                    await asyncio.to_thread(self.outbox.append, rows)
                except OSError as disk:
                    self._pending[:0] = rows
                    self.record_error(f"{exc}; the outbox too: {disk}")
            else:
                if self.last_error is not None:
                    log.info("usage written to the database again")
                self.last_error = None

    def _others_waiting(self) -> bool:
        """Whether another worker's outbox is left (it died with rows waiting), looked for only
        while the database works: a glob per flush costs little."""
        return self.last_error is None and self.outbox.others_waiting()

    def _failed(self, exc: Exception) -> None:
        self._close_connection()
        self._days.clear()  # a partition may have been dropped meanwhile
        self.record_error(str(exc).strip() or type(exc).__name__)

    def record_error(self, error: str) -> None:
        if error != self.last_error:
            log.error(
                "usage not written to the database; kept in the outbox",
                extra={"fields": {"error": error, "pending": self.pending}},
            )
        self.last_error = error

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self.url, connect_timeout=CONNECT_TIMEOUT, application_name="llmp-usage"
            )
            migrate(conn)
            conn.commit()
            self._conn = conn
        return self._conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _write_all(self, rows: list[RequestRow]) -> None:
        """`rows`, then what the outboxes hold (in a worker thread)."""
        conn = self._connection()
        if rows:
            write_rows(conn, rows, self._days)
        for batch, _ in self.outbox.batches(DRAIN_BATCH):
            write_rows(conn, batch, self._days)

    def _keep(self, retention: bool) -> bool:
        """See `keep` (in a worker thread)."""
        try:
            if not self.leader.lead():
                return False
            conn = self.leader.connection
            if self._leader_schema is not conn:  # a new connection: the schema brought up
                migrate(conn)
                self._leader_schema = conn
            for _ in range(FOLDS_PER_ROUND):
                if rollups.fold(conn) < rollups.FOLD_BATCH:
                    break
            if retention:
                self._retention(conn)
        except psycopg.Error as exc:
            log.warning("usage upkeep failed", extra={"fields": {"error": str(exc).strip()}})
            return False
        return True

    def _retention(self, conn: psycopg.Connection[Any]) -> None:
        if self.original_csv is not None and self.original_csv.is_dir():
            try:
                with conn.transaction():
                    keys = [(k.key, k.id, k.username) for k in keys_in(conn)]
            except KeyFileError as exc:  # a key row edited by hand gone wrong
                log.warning("original CSV not imported", extra={"fields": {"error": str(exc)}})
            else:
                imported = import_original_csv(conn, self.original_csv, keys)
                if imported:
                    log.info("original CSV imported", extra={"fields": {"imported": imported}})
        now = time.time()
        cutoff_day = int(now // 86400) - self.retention_days
        pruned = rollups.prune(conn, int((now - self.rollup_retention_days * 86400) * 1000))
        with conn.transaction():
            names = [
                name
                for (name,) in conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'llmp_requests'::regclass"
                ).fetchall()
            ]
            old = [n for n in names if n < partition_name(cutoff_day)]
            for name in old:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        if old:
            self._days.clear()
        if old or pruned:
            log.info(
                "usage kept",
                extra={"fields": {"partitions_dropped": len(old), "pruned_rollups": pruned}},
            )

    async def close(self) -> None:
        """Write what is left (to the outbox if the database is away) and let go."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()
        async with self._lock:
            self._close_connection()
            self.outbox.close()
        async with self._keeping:
            await asyncio.to_thread(self.leader.release)
