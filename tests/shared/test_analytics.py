"""analytics.db: the original's CSV files imported once, old rows pruned."""

import hashlib
import sqlite3
import threading

from shared import analytics
from shared.analytics import RequestRow


def _csv(folder, secret, text):
    folder.mkdir(exist_ok=True)
    (folder / (hashlib.md5(secret.encode()).hexdigest() + ".csv")).write_text(text)


def test_original_csv_is_imported_once_and_matched_to_its_key(tmp_path):
    folder = tmp_path / "analytics"
    _csv(
        folder,
        "sk-alice",
        "startTime,endTime\n1700000000000,1700000000500\n"
        "1700000001000,null\n\n1700000002000,1700000002100\n",
    )
    _csv(folder, "sk-unknown", "startTime,endTime\n1700000000000,1700000000001\n")
    db = analytics.connect(tmp_path / "analytics.db")
    keys = [("sk-alice", "a" * 32, "alice"), ("sk-bob", "b" * 32, "bob")]
    assert analytics.import_original_csv(db, folder, keys) == 3
    assert analytics.import_original_csv(db, folder, keys) == 0  # once
    rows = db.execute(
        "SELECT key_id, username, start_ms, end_ms, status FROM requests ORDER BY start_ms"
    ).fetchall()
    assert rows == [
        ("a" * 32, "alice", 1700000000000, 1700000000500, 200),
        ("a" * 32, "alice", 1700000001000, None, 0),
        ("a" * 32, "alice", 1700000002000, 1700000002100, 200),
    ]


def test_concurrent_imports_import_once(tmp_path):
    folder = tmp_path / "analytics"
    _csv(
        folder,
        "sk-alice",
        "startTime,endTime\n"
        + "".join(f"{1700000000000 + i},{1700000000100 + i}\n" for i in range(500)),
    )
    keys = [("sk-alice", "a" * 32, "alice")]
    analytics.connect(tmp_path / "analytics.db").close()

    def worker():
        analytics.import_original_csv(analytics.connect(tmp_path / "analytics.db"), folder, keys)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db = analytics.connect(tmp_path / "analytics.db")
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone() == (500,)


def test_prune_deletes_only_old_rows(tmp_path):
    db = analytics.connect(tmp_path / "analytics.db")
    analytics.insert(db, [RequestRow(f"r{i}", "k", "u", start_ms=i * 1000) for i in range(10)])
    assert analytics.prune(db, before_ms=5000) == 5
    assert [r[0] for r in db.execute("SELECT start_ms FROM requests ORDER BY start_ms")] == [
        5000,
        6000,
        7000,
        8000,
        9000,
    ]


def test_a_database_from_before_the_queue_and_estimate_columns_gets_them(tmp_path):
    path = tmp_path / "analytics.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE requests (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, key_id TEXT "
        "NOT NULL, username TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER, status "
        "INTEGER NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, model TEXT, upstream TEXT, "
        "stream INTEGER NOT NULL, ttfb_ms REAL, prompt_tokens INTEGER, completion_tokens "
        "INTEGER, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, error TEXT)"
    )
    old.execute(
        "INSERT INTO requests VALUES (1, 'r', 'k', 'u', 1, 2, 200, 'POST', '/v1/x', NULL, NULL, "
        "0, NULL, NULL, NULL, 0, 0, NULL)"
    )
    old.commit()
    old.close()
    db = analytics.connect(path)
    analytics.insert(
        db, [analytics.RequestRow("r2", "k", "u", 3, queue_ms=12.5, usage_estimated=True)]
    )
    assert db.execute("SELECT request_id, queue_ms, usage_estimated FROM requests").fetchall() == [
        ("r", None, 0),
        ("r2", 12.5, 1),
    ]
    analytics.connect(path).close()  # a second open (another worker) changes nothing


def test_a_database_from_before_the_end_user_column_gets_it(tmp_path):
    path = tmp_path / "analytics.db"
    old = analytics.connect(path)
    old.execute("ALTER TABLE requests DROP COLUMN end_user")
    old.execute(
        "INSERT INTO requests (request_id, key_id, username, start_ms, status, method, path, "
        "stream, bytes_in, bytes_out) VALUES ('r', 'k', 'u', 1, 200, 'POST', '/v1/x', 0, 0, 0)"
    )
    old.close()
    db = analytics.connect(path)
    analytics.insert(db, [analytics.RequestRow("r2", "k", "u", 3, end_user="alice")])
    assert db.execute("SELECT request_id, end_user FROM requests").fetchall() == [
        ("r", None),
        ("r2", "alice"),
    ]
