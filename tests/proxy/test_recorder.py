"""The recorder's upkeep: the original's CSV files imported at start and old rows pruned every
PRUNE_INTERVAL, on an injected clock (never the machine's uptime)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from pathlib import Path

from services.proxy.recorder import PRUNE_INTERVAL, Recorder
from shared.analytics import RequestRow
from shared.apikeys import ApiKey


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
        recorder = Recorder(db, 30, lambda: [alice], clock=clock)
        await recorder.start()
        try:
            await _until(lambda: _count(db) == 1)  # imported at start
            old = now_ms - 40 * 86400 * 1000
            recorder.record(RequestRow("r1", alice.id, "alice", old, old + 1, 200))
            await _until(lambda: _count(db, f"start_ms = {old}") == 1)
            clock.now += PRUNE_INTERVAL - 1  # not yet an hour: kept
            await asyncio.sleep(1.2)
            assert _count(db, f"start_ms = {old}") == 1
            clock.now += 1  # an hour after the last upkeep: pruned
            await _until(lambda: _count(db, f"start_ms = {old}") == 0)
            assert _count(db) == 1
        finally:
            await recorder.close()

    asyncio.run(scenario())
