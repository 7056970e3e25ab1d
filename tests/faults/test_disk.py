"""The machine misbehaving under a running gateway: the data disk full, `analytics.db` locked by
another program, `apikeys.json` deleted or garbled by hand.

Each time the proxy keeps serving (with its last good keys), says what is wrong in its log and
in `/healthz`, loses no analytics row, and recovers by itself once the fault is gone. The whole
gateway runs under supervisord with nginx in front, as deployed.
"""

from __future__ import annotations

import resource
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.apikeys import ApiKey
from tests.conftest import eventually
from tests.stack.conftest import Stack
from tests.upstream import FakeUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    running = FakeUpstream("a", ["model-a"], chunks=3).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("machine"), [upstream], workers=1).start()
    yield running
    assert running.stop() == 0, running.output()


@pytest.fixture
def key(stack: Stack) -> ApiKey:
    new = ApiKey.new("disk")
    stack.keys(new)
    eventually(lambda: send(stack, new).status_code == 200)
    eventually(lambda: proxy_error(stack) is None)  # no error left from before
    return new


def send(stack: Stack, key: ApiKey, stream: bool = False) -> httpx.Response:
    return httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "model-a", "messages": [], "stream": stream},
        headers={"Authorization": f"Bearer {key.key}"},
        timeout=10,
    )


def rows(stack: Stack) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(stack.data / "analytics.db", timeout=30)
    try:
        return db.execute("SELECT * FROM requests ORDER BY id").fetchall()
    finally:
        db.close()


def rows_of(stack: Stack, answers: list[httpx.Response]) -> list[tuple[Any, ...]] | None:
    """Every row, once those of `answers` are all written."""
    found = rows(stack)
    written = {row[1] for row in found}
    return found if all(r.headers["x-request-id"] in written for r in answers) else None


def proxy_error(stack: Stack) -> str | None:
    health = httpx.get(stack.url + "/healthz", timeout=30).json()
    return health["programs"]["proxy"].get("last_error")


# A request that waited for the database would wait for SQLite's busy timeout (10 s), or fail;
# one that does not is answered in a few milliseconds, a second or so on a loaded machine.
NOT_WAITING = 5.0


def serve_while(stack: Stack, key: ApiKey, count: int) -> list[httpx.Response]:
    """`count` requests, every other one streamed, none waiting for the database."""
    answers = []
    for i in range(count):
        t0 = time.monotonic()
        r = send(stack, key, stream=i % 2 == 1)
        assert r.status_code == 200 and time.monotonic() - t0 < NOT_WAITING, r.text
        answers.append(r)
    return answers


def test_disk_full_keeps_serving_and_every_row_is_written_once_there_is_room(stack, key):
    serve_while(stack, key, 4)
    before = eventually(lambda: (found := rows(stack)) and len(found) >= 4 and found)
    workers = [int(w["pid"]) for w in stack.workers()]
    # A file may not grow past 2 kB: every analytics write fails as on a full disk (EFBIG where
    # a real one says ENOSPC), while the small heartbeat still gets through.
    limits = {pid: resource.prlimit(pid, resource.RLIMIT_FSIZE) for pid in workers}
    for pid, (_, hard) in limits.items():
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (2048, hard))
    try:
        answers = serve_while(stack, key, 12)
        error = eventually(lambda: proxy_error(stack))
        assert error in ("disk I/O error", "database or disk is full"), error  # EFBIG, ENOSPC
        assert rows(stack) == before  # nothing written, nothing lost
    finally:
        for pid, limit in limits.items():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limit)
    after = eventually(lambda: rows_of(stack, answers))
    assert after[: len(before)] == before
    written = [row[1] for row in after[len(before) :]]
    assert len(set(written)) == len(written)  # each once
    eventually(lambda: proxy_error(stack) is None)
    assert "analytics not written; will retry" in stack.output()


def test_database_locked_by_another_program_keeps_serving_and_loses_nothing(stack, key):
    serve_while(stack, key, 2)
    before = eventually(lambda: (found := rows(stack)) and found)
    # A long reader does not get in the way of writes (WAL)...
    reader = sqlite3.connect(stack.data / "analytics.db", isolation_level=None, timeout=30)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM requests").fetchone()
    answers = serve_while(stack, key, 4)
    ids = {r.headers["x-request-id"] for r in answers}
    eventually(lambda: ids <= {row[1] for row in rows(stack)})
    reader.execute("COMMIT")
    # ...but one holding the write lock longer than the proxy waits for it (10 s) does: held,
    # with requests served all along, until the proxy reports it.
    reader.execute("BEGIN EXCLUSIVE")
    try:

        def locked_out() -> bool:
            answers.extend(serve_while(stack, key, 1))
            return proxy_error(stack) == "database is locked"

        eventually(locked_out, timeout=90, interval=0.2)
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    after = eventually(lambda: rows_of(stack, answers))
    assert after[: len(before)] == before
    written = [row[1] for row in after[len(before) :]]
    assert len(set(written)) == len(written)
    eventually(lambda: proxy_error(stack) is None)


GARBLED = [
    ("deleted", None),
    ("emptied", b""),
    ("cut short", b'{"keys": [{"id": "1", "username": "x", "key": "'),
    ("not an object", b"[1, 2, 3]\n"),
    ("keys not a list", b'{"keys": "all of them"}\n'),
    ("binary", bytes(range(256)) * 4),
]


def beat_after(stack: Stack, moment: float) -> dict[str, Any]:
    """The proxy's heartbeat, once it has been written after `moment`."""
    return eventually(
        lambda: next((w for w in stack.workers() if w["updated"] > moment + 0.1), None)
    )


def test_keys_file_deleted_or_garbled_keeps_the_last_good_keys(stack, key):
    path: Path = stack.data / "apikeys.json"
    good = path.read_bytes()
    stranger = ApiKey.new("stranger")  # in no version of the file
    try:
        for damage, content in GARBLED:
            if content is None:
                path.unlink()
            else:
                path.write_bytes(content)
            damaged = time.time()
            for _ in range(3):
                assert send(stack, key).status_code == 200, damage
                assert send(stack, stranger).status_code == 401, damage
            beat = beat_after(stack, damaged)
            assert beat["last_error"] and beat["keys"] == 1, (damage, beat)
            assert proxy_error(stack) == beat["last_error"]
    finally:
        path.write_bytes(good)
    eventually(lambda: proxy_error(stack) is None)
    assert send(stack, key).status_code == 200
    assert stack.output().count("serving the last good keys") >= 2


def test_a_reader_of_keys_file_never_sees_a_torn_write(stack, key):
    """Rewriting the file as the api does (atomically), many times over, never leaves the proxy
    without keys, even for a moment."""
    others = [ApiKey.new(f"user{i}") for i in range(50)]
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            statuses.append(send(stack, key).status_code)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        # At least 40 rewrites, and as many as it takes for 20 requests to run among them.
        for i in range(10_000):
            if i >= 40 and len(statuses) >= 20:
                break
            stack.keys(key, *others[: i % len(others) + 1])
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
    assert len(statuses) >= 20 and set(statuses) == {200}
    assert proxy_error(stack) is None
