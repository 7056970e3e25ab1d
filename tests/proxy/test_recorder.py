"""The analytics recorder: bounded rows, bounded memory while the database cannot be written."""

import asyncio
import sqlite3

from services.proxy import recorder
from services.proxy.recorder import Recorder
from shared.analytics import RequestRow


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
