"""The one table of the analytics columns as the api answers them: every field reads the table,
the records keep the original's two first, and the JSON SQLite makes for a row is the object
Python makes for it."""

from __future__ import annotations

import json

from services.api.request_fields import FIELDS, LOG, RECORD
from shared import analytics
from shared.analytics import COLUMNS, RequestRow


def test_every_field_reads_a_column_of_the_table(tmp_path):
    db = analytics.connect(tmp_path / "analytics.db")
    assert [
        n for n, f in FIELDS.items() if f.sql.isidentifier() and f.sql not in ("id", *COLUMNS)
    ] == []
    for fields in (LOG, RECORD):
        assert db.execute(f"SELECT {fields.select} FROM requests").fetchall() == []
    assert RECORD.names[:2] == ("startTime", "endTime")  # the original's two first
    assert LOG.names == tuple(FIELDS)


def test_the_json_sqlite_makes_is_the_entry_python_makes(tmp_path):
    db = analytics.connect(tmp_path / "analytics.db")
    rows = [
        RequestRow("a", "k", "alice", 1000, 2500, 200, "POST", "/v1/chat/completions", "m",
                   "http://u", True, 120.25, 10, 20, 5, 6, None, 0.5, True, 'quote " é \n'),
        RequestRow("b", "k", "bob", 2000, None, 502, "POST", "/v1/x", None, None, False, None,
                   None, None, 0, 0, "=cmd|' /C calc'!A0", None, False, None),
    ]  # fmt: skip
    analytics.insert(db, rows)
    for fields in (LOG, RECORD):
        made = [json.loads(r[0]) for r in db.execute(f"SELECT {fields.select_json} FROM requests")]
        entries = [fields.entry(r) for r in db.execute(f"SELECT {fields.select} FROM requests")]
        assert made == entries
        assert list(made[0]) == list(fields.names)
    assert (made[0]["stream"], made[1]["stream"], made[0]["endUser"]) == (
        True,
        False,
        'quote " é \n',
    )
