"""The usage log in PostgreSQL (shared/pg/usage.py): exactly one row per request through a
database outage, batches written twice, rows left by a dead worker, partitions by day, the
rollups kept by one leader."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import psycopg
import pytest

from shared import storage
from shared.analytics import RequestRow
from shared.pg.keys import PgKeyAdmin
from shared.pg.rollups import queued
from shared.pg.usage import (
    DAY_MS,
    PgUsageLog,
    import_original_csv,
    partition_name,
    write_rows,
)
from shared.rollups import HOUR, TOTAL
from shared.settings import Settings
from tests.postgres import Cluster
from tests.shared.test_keystore import until


def row(n: int, start_ms: int | None = None) -> RequestRow:
    start = start_ms if start_ms is not None else int(time.time() * 1000)
    return RequestRow(request_id=f"r{n}", key_id="k" * 32, username="alice", start_ms=start)


def counts(url: str) -> tuple[int, int]:
    """(rows, distinct request ids)"""
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT count(*), count(DISTINCT request_id) FROM llmp_requests")
        return found.fetchone() or (0, 0)


@pytest.fixture
def own_cluster():
    cluster = Cluster()
    cluster.start()
    yield cluster
    cluster.remove()


def test_one_row_per_request_through_a_database_outage_under_load(own_cluster, tmp_path):
    url = own_cluster.new_database()
    usage = PgUsageLog(url, tmp_path / "outbox", 30)
    recorded = 0

    async def load(until: asyncio.Event) -> None:
        nonlocal recorded
        while not until.is_set():
            for _ in range(20):
                usage.record(row(recorded))
                recorded += 1
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        await usage.start()
        done = asyncio.Event()
        producer = asyncio.create_task(load(done))
        await asyncio.sleep(1)
        await asyncio.to_thread(own_cluster.stop, "immediate")  # as a crash would
        await until(lambda: usage.outbox.rows >= 1000, within=30)  # spilled, the load going on
        assert usage.last_error is not None
        await asyncio.to_thread(own_cluster.start)
        await until(lambda: usage.outbox.rows == 0, within=30)  # drained, the load going on
        await asyncio.sleep(0.5)
        done.set()
        await producer
        await usage.close()

    asyncio.run(scenario())
    assert recorded > 2000
    assert counts(url) == (recorded, recorded)
    assert usage.dropped == 0 and usage.pending == 0 and usage.last_error is None
    assert not list((tmp_path / "outbox").glob("*.jsonl"))


def test_a_batch_written_twice_is_kept_once(database_url, tmp_path):
    usage = PgUsageLog(database_url, tmp_path / "outbox", 30)
    rows = [row(n) for n in range(50)]

    async def scenario() -> None:
        for r in rows:
            usage.record(r)
        await usage.flush()
        usage.outbox.append(rows)  # as if the commit's answer had been lost
        usage.record(row(50))
        await usage.flush()
        await usage.close()

    asyncio.run(scenario())
    assert counts(database_url) == (51, 51)


def test_the_outbox_of_a_worker_that_died_is_drained_by_another(database_url, tmp_path):
    folder = tmp_path / "outbox"
    dead = PgUsageLog(database_url, folder, 30)
    dead.outbox.path = folder / "usage-999999999.jsonl"  # a pid no worker has
    dead.outbox.append([row(n) for n in range(10)])
    dead.outbox._file.close()  # it died: its lock is gone with it
    alive = PgUsageLog(database_url, folder, 30)

    async def scenario() -> None:
        alive.record(row(10))
        await alive.flush()
        await alive.close()

    asyncio.run(scenario())
    assert counts(database_url) == (11, 11)
    assert not list(folder.glob("*.jsonl"))


def test_the_outbox_of_a_live_worker_is_left_to_it(database_url, tmp_path):
    folder = tmp_path / "outbox"
    live = PgUsageLog(database_url, folder, 30)
    live.outbox.path = folder / "usage-999999999.jsonl"
    live.outbox.append([row(n) for n in range(10)])  # held locked while it lives
    other = PgUsageLog(database_url, folder, 30)

    async def scenario() -> None:
        other.record(row(10))
        await other.flush()
        await other.close()
        await live.close()  # now it writes its own

    asyncio.run(scenario())
    assert counts(database_url) == (11, 11)


def test_rows_go_to_a_partition_per_day_and_old_days_are_dropped_whole(database_url, tmp_path):
    today = int(time.time() * 1000) // DAY_MS
    days = [today - 40, today - 31, today - 29, today]
    usage = PgUsageLog(database_url, tmp_path / "outbox", 30)

    async def scenario() -> None:
        for n, day in enumerate(days):
            usage.record(row(n, day * DAY_MS + 1000))
        await usage.flush()
        await usage.keep()
        await usage.close()

    asyncio.run(scenario())
    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'llmp_requests'::regclass ORDER BY 1"
        ).fetchall()
    assert [name for (name,) in left] == [partition_name(d) for d in days[2:]]
    assert counts(database_url) == (2, 2)


def rolled_up(url: str) -> tuple[int, int]:
    """(requests in the rollups' total per hour, rows waiting to be folded)"""
    with psycopg.connect(url) as conn:
        total = conn.execute(
            "SELECT COALESCE(SUM(requests), 0) FROM llmp_rollups WHERE grain = %s AND level = %s",
            (HOUR, TOTAL),
        ).fetchone()
        return int(total[0]) if total else 0, queued(conn)


def test_one_worker_folds_every_workers_rows_into_the_rollups_and_another_takes_over(
    postgres, database_url, tmp_path
):
    first = PgUsageLog(database_url, tmp_path / "a", 30)
    second = PgUsageLog(database_url, tmp_path / "b", 30)

    async def scenario() -> None:
        for n in range(30):
            (first, second)[n % 2].record(row(n))
        await first.flush()
        await second.flush()
        assert rolled_up(database_url) == (0, 30)  # written, nothing updated yet
        assert await first.keep()
        assert not await second.keep()
        assert rolled_up(database_url) == (30, 0)
        assert postgres.terminate("llmp-usage-leader") == 2  # the leader's and the other's try
        assert await second.keep()  # the lock was let go with its connection: taken over
        assert not await first.keep()  # and the old leader learns it lost
        for n in range(30, 40):
            first.record(row(n))
        await first.flush()
        assert not await first.keep()
        assert rolled_up(database_url) == (30, 10)
        assert await second.keep()
        assert rolled_up(database_url) == (40, 0)
        await first.close()
        await second.close()

    asyncio.run(scenario())


def waiting_for_a_lock(url: str, application_name: str) -> bool:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
            " AND wait_event_type = 'Lock'",
            (application_name,),
        ).fetchone()
        return found is not None


def test_the_leaders_own_rows_are_written_while_it_folds(database_url, tmp_path):
    """A fold held up (the rollups locked by another) holds up none of the leader's writes."""
    usage = PgUsageLog(database_url, tmp_path / "outbox", 30)

    async def scenario() -> None:
        usage.record(row(0))
        await usage.flush()
        with psycopg.connect(database_url) as blocker:
            blocker.execute("LOCK TABLE llmp_rollups IN EXCLUSIVE MODE")
            folding = asyncio.create_task(usage.keep())
            await until(lambda: waiting_for_a_lock(database_url, "llmp-usage-leader"), within=30)
            usage.record(row(1))
            await asyncio.wait_for(usage.flush(), 30)
            assert counts(database_url) == (2, 2)
            assert not folding.done()
            blocker.rollback()
        assert await folding
        assert rolled_up(database_url) == (2, 0)
        await usage.close()

    asyncio.run(scenario())


def test_rows_written_by_any_statement_are_queued_for_the_rollups(database_url, tmp_path):
    """Rows an older llmp writes while a newer one upgrades the schema (its plain INSERT, a COPY)
    are queued as a batch of the usage log is, and only the rows added."""
    usage = PgUsageLog(database_url, tmp_path / "outbox", 30)

    async def scenario() -> None:
        usage.record(row(0))
        await usage.flush()
        now = int(time.time() * 1000)
        with psycopg.connect(database_url) as conn:
            insert = (
                "INSERT INTO llmp_requests (request_id, key_id, username, start_ms, status,"
                " method, path, stream, bytes_in, bytes_out) VALUES"
                " (%s, 'k', 'u', %s, 200, 'POST', '/v1', false, 0, 0) ON CONFLICT DO NOTHING"
            )
            conn.execute(insert, ("old-1", now))
            conn.execute(insert, ("old-1", now))  # already there: nothing queued
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY llmp_requests (request_id, key_id, username, start_ms, status, method,"
                    " path, stream, bytes_in, bytes_out) FROM STDIN"
                ) as copy,
            ):
                copy.write_row(("old-2", "k", "u", now, 200, "POST", "/v1", True, 0, 0))
        assert rolled_up(database_url) == (0, 3)
        assert await usage.keep()
        assert rolled_up(database_url) == (3, 0)
        await usage.close()

    asyncio.run(scenario())


def original_csv(folder, secret: str, starts: list[int]) -> None:
    """One of the original llm-proxy's analytics files, as it names and writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{start},{start + 250}\n" for start in starts)
    path = folder / (hashlib.md5(secret.encode()).hexdigest() + ".csv")
    path.write_text("startTime,endTime\n" + lines)


def test_the_original_csv_is_imported_once_by_the_leader_of_every_replica(database_url, tmp_path):
    """Two replicas with the original's CSV files in their data/analytics: the usage job's leader
    imports them; the other replica, taking over, and a restarted one import nothing again."""
    alice = PgKeyAdmin(database_url).create("alice")
    now = int(time.time() * 1000)
    starts = [now - 3 * DAY_MS, now - 1000, now - 500]
    for name in ("a", "b"):  # each replica's own copy of the install's files
        original_csv(tmp_path / name / "analytics", alice.key, starts)
        original_csv(tmp_path / name / "analytics", "sk-no-such-key", [now])

    def replica(name: str) -> PgUsageLog:
        """As a proxy worker makes it, with its replica's data/ folder."""
        usage = storage.usage_log(Settings(data_dir=tmp_path / name, database_url=database_url))
        assert isinstance(usage, PgUsageLog)
        return usage

    first, second = replica("a"), replica("b")

    async def scenario() -> None:
        assert await first.keep()
        assert not await second.keep()  # not the leader: imports nothing
        await first.close()  # lets the job go
        assert await second.keep()  # the new leader: the files are imported already
        await second.close()
        again = replica("a")  # a restart
        assert await again.keep()
        await again.close()

    asyncio.run(scenario())
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT key_id, username, request_id, start_ms, end_ms, status FROM llmp_requests"
            " ORDER BY start_ms"
        ).fetchall()
        claims = conn.execute("SELECT rows FROM llmp_csv_imports").fetchall()
    assert rows == [(alice.id, "alice", "imported", s, s + 250, 200) for s in starts]
    assert claims == [(3,)]


def test_replicas_importing_the_original_csv_at_once_import_it_once(database_url, tmp_path):
    alice = PgKeyAdmin(database_url).create("alice")
    start = int(time.time() * 1000) - 60_000
    original_csv(tmp_path, alice.key, [start + n for n in range(2000)])
    keys = [(alice.key, alice.id, alice.username)]
    added: list[int] = []

    def importer() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            added.append(import_original_csv(conn, tmp_path, keys))

    threads = [threading.Thread(target=importer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(added) == [0, 0, 0, 2000]
    assert counts(database_url) == (2000, 1)


def test_csv_rows_moved_in_already_are_not_imported_again(database_url, tmp_path):
    """An install moved in with `llmp database import` brings the rows its proxy imported from
    the CSV files into SQLite; the files, still in data/analytics, add nothing again."""
    alice = PgKeyAdmin(database_url).create("alice")
    start = int(time.time() * 1000) - 60_000
    starts = [start, start + 10, start + 20]
    original_csv(tmp_path, alice.key, starts)
    moved = [RequestRow("imported", alice.id, "alice", s, s + 250, status=200) for s in starts[:2]]
    keys = [(alice.key, alice.id, alice.username)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        write_rows(conn, moved, set())
        assert import_original_csv(conn, tmp_path, keys) == 1  # the row not moved
        assert import_original_csv(conn, tmp_path, keys) == 0
    assert counts(database_url) == (3, 1)
