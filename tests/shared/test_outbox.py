"""The usage outbox (shared/pg/outbox.py): rows kept on disk, read back as they were; a line cut
short by a crash is skipped, the rest kept."""

from __future__ import annotations

from shared.analytics import RequestRow
from shared.pg.outbox import Outbox


def test_rows_come_back_as_they_went_in_and_a_cut_line_is_skipped(tmp_path):
    box = Outbox(tmp_path)
    rows = [
        RequestRow(request_id=f"r{n}", key_id="k", username="u", start_ms=n, model="é", stream=True)
        for n in range(5)
    ]
    box.append(rows[:3])
    with open(box.path, "ab") as handle:
        handle.write(b'{"request_id": "r-half", "key')  # a crash in the middle of a write
    with open(box.path, "ab") as handle:
        handle.write(b"\n")
    box.append(rows[3:])
    assert box.rows == 5
    got = [row for batch, _ in box.batches(2) for row in batch]
    assert got == rows and box.damaged == 1
    assert box.rows == 0 and box.path.stat().st_size == 0  # all read: forgotten
    box.close()
    assert not box.path.exists()


def test_a_failed_write_leaves_the_rows_for_later(tmp_path):
    box = Outbox(tmp_path)
    rows = [RequestRow(request_id=f"r{n}", key_id="k", username="u", start_ms=n) for n in range(4)]
    box.append(rows)
    for batch, _ in box.batches(2):
        assert batch == rows[:2]
        break  # the database failed on the first batch
    assert box.rows == 4
    assert [r for batch, _ in box.batches(10) for r in batch] == rows
    box.close()
