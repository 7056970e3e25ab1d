"""The recorder: rows and their rollups written together; a database from before the rollups
gets them at start, while new rows keep being written, and its old rows are kept until then."""

from __future__ import annotations

import asyncio
import time

from services.proxy.recorder import Recorder
from shared import analytics, rollups
from shared.analytics import RequestRow
from shared.rollups import DAY, Query

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
        steps = []
        real_step = rollups.backfill_step

        def step(db, batch=rollups.BACKFILL_BATCH):  # type: ignore[no-untyped-def]
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
