"""The analytics recorder: the original's CSV files imported at start and old rows pruned every
PRUNE_INTERVAL, on an injected clock (never the machine's uptime); bounded rows, bounded memory
while the database cannot be written; rows and their rollups written together, and a database
from before the rollups gets them at start while new rows keep being written."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from pathlib import Path

from services.proxy import recorder
from services.proxy.recorder import PRUNE_INTERVAL, Recorder
from shared import analytics, rollups
from shared.analytics import RequestRow
from shared.apikeys import ApiKey
from shared.rollups import DAY, Query


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _count(db: Path, where: str = "1") -> int:
    """Rows in the requests table; 0 until the recorder has created the database and its table."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        try:
            found = connection.execute(f"SELECT count(*) FROM requests WHERE {where}").fetchone()
        except sqlite3.OperationalError:  # the file exists, its schema is still being written
            return 0
        return int(found[0])


async def _until(check) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 (the writes happen in another thread, in SQLite)
            await asyncio.sleep(0.05)


def test_upkeep_runs_at_start_on_a_machine_up_for_seconds_then_every_interval(tmp_path: Path):
    alice = ApiKey(id="a" * 32, username="alice", key="sk-alice", createdAt="2024-01-01")
    folder = tmp_path / "analytics"
    folder.mkdir()
    csv = folder / (hashlib.md5(b"sk-alice").hexdigest() + ".csv")
    now_ms = int(time.time() * 1000)
    csv.write_text(f"startTime,endTime\n{now_ms - 1000},{now_ms - 500}\n")
    db = tmp_path / "analytics.db"
    clock = FakeClock(12.0)  # a machine booted 12 seconds ago (a fresh VM, CI, a container)

    async def scenario() -> None:
        rec = Recorder(db, 30, lambda: [alice], clock=clock)
        await rec.start()
        try:
            await _until(lambda: _count(db) == 1)  # imported at start
            old = now_ms - 40 * 86400 * 1000
            rec.record(RequestRow("r1", alice.id, "alice", old, old + 1, 200))
            await _until(lambda: _count(db, f"start_ms = {old}") == 1)
            clock.now += PRUNE_INTERVAL - 1  # not yet an hour: kept
            for marker in ("m1", "m2"):  # two flushes: a whole pass of the loop saw the clock
                rec.record(RequestRow(marker, alice.id, "alice", now_ms, now_ms + 1, 200))
                await _until(lambda m=marker: _count(db, f"request_id = '{m}'") == 1)
            assert _count(db, f"start_ms = {old}") == 1
            clock.now += 1  # an hour after the last upkeep: pruned
            await _until(lambda: _count(db, f"start_ms = {old}") == 0)
            assert _count(db) == 3  # the imported row and the two markers
        finally:
            await rec.close()

    asyncio.run(scenario())


def row(i: int, model: str = "m") -> RequestRow:
    return RequestRow(f"r{i}", "k", "u", i, model=model, path="/v1/chat/completions")


def test_a_row_keeps_at_most_max_text_bytes_of_each_text_a_client_chose(tmp_path):
    rec = Recorder(tmp_path / "a.db", 90, list)
    long = row(1, model="é" * 1_000_000)
    long.path, long.method, long.error = "/v1/" + "p" * 10_000, "X" * 5000, "e" * 5000
    rec.record(long)
    for text in (long.model, long.path, long.method, long.error):
        assert text and len(text.encode()) <= recorder.MAX_TEXT
    assert long.model == "é" * (recorder.MAX_TEXT // 2)  # cut on a character boundary
    short = row(2, model="llama3:8b")
    rec.record(short)
    assert short.model == "llama3:8b"


def test_pending_rows_are_bounded_by_bytes_oldest_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "MAX_PENDING_BYTES", 100_000)
    (tmp_path / "a.db").mkdir()  # a database that cannot be opened: every flush fails
    rec = Recorder(tmp_path / "a.db", 90, list)
    for i in range(1000):
        rec.record(row(i, model="x" * 400))
    assert rec.pending_bytes <= 100_000 and rec.dropped > 0
    assert rec.pending * (recorder.ROW_BYTES + 400) >= 100_000 - 2000  # full, not emptier
    newest = rec._pending[-1].request_id
    asyncio.run(rec.flush())
    assert rec.last_error is not None
    assert rec.pending_bytes <= 100_000 and rec._pending[-1].request_id == newest


def test_a_database_deleted_under_the_recorder_is_opened_again_and_said(tmp_path, caplog):
    path = tmp_path / "analytics.db"

    async def scenario() -> None:
        rec = Recorder(path, 90, list)
        rec.record(row(1))
        await rec.flush()
        for name in ("analytics.db", "analytics.db-wal", "analytics.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        rec.record(row(2))
        await rec.flush()
        await rec.close()

    asyncio.run(scenario())
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT request_id FROM requests")] == ["r2"]
    db.close()
    assert "analytics.db was deleted or replaced" in caplog.text


NOW = int(time.time() * 1000)


def _row(i: int, start: int) -> RequestRow:
    return RequestRow(f"r{i}", "k1", "alice", start, start + 10, 200, prompt_tokens=1)


def test_an_old_database_gets_its_rollups_while_new_rows_are_written(tmp_path, monkeypatch):
    path = tmp_path / "analytics.db"
    db = analytics.connect(path)
    db.executescript("DROP TABLE rollups; DROP TABLE rollup_state;")
    old = [_row(i, NOW - 200 * DAY + i) for i in range(5)]  # older than the retention
    old += [_row(i, NOW - DAY + i) for i in range(5, 250)]
    db.executemany(analytics._INSERT, map(analytics._values, old))
    db.close()
    monkeypatch.setattr(rollups, "BACKFILL_BATCH", 40)

    async def run() -> None:
        recorder = Recorder(path, 90, list, rollup_retention_days=730)
        steps: list[int] = []
        real_step = rollups.backfill_step

        def step(db, batch=rollups.BACKFILL_BATCH):
            recorder.record(_row(1000 + len(steps), NOW))  # a request meanwhile
            steps.append(batch)
            return real_step(db, batch)

        monkeypatch.setattr(rollups, "backfill_step", step)
        await recorder.start()
        for _ in range(500):
            await asyncio.sleep(0.02)
            if len(steps) >= 7 and recorder.pending == 0:
                break
        await recorder.close()
        assert len(steps) == 7  # 250 old rows in batches of 40, each its own transaction

    asyncio.run(run())
    db = analytics.connect(path)
    assert rollups.backfill_left(db) == 0
    total = Query(NOW - 300 * DAY, NOW + DAY, (), (), 0).run(db)[0]
    assert total["requests"] == 250 + 7  # every old row once, and the new ones
    # The rows past the retention went only once their sums were kept.
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 245 + 7
