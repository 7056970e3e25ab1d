"""Noticing a file's changes (shared/watch.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import shared.watch as watch_module
from shared.watch import FileWatch, Signature, signature


def test_signature_changes_with_each_replacement_and_is_none_without_a_file(tmp_path):
    path = tmp_path / "f.json"
    assert signature(path) is None
    path.write_text("1")
    first = signature(path)
    (tmp_path / "g.json").write_text("22")
    (tmp_path / "g.json").replace(path)
    assert signature(path) not in (None, first)


def test_the_poll_sees_each_change_without_inotify(tmp_path):
    """(inotify alone is tested below, with the poll out of the way.)"""
    path = tmp_path / "watched.json"

    async def scenario() -> None:
        seen: list[bytes | None] = []
        changed = asyncio.Event()

        def check() -> None:
            content = path.read_bytes() if path.exists() else None
            if content and content not in seen:
                seen.append(content)
                changed.set()

        watch = FileWatch(path, check, "test-poll")
        await watch.start()
        watch._observer.stop()  # as on a bind mount where inotify sees nothing
        try:
            path.write_bytes(b"one")
            await asyncio.wait_for(changed.wait(), 10)
            changed.clear()
            path.write_bytes(b"two")
            await asyncio.wait_for(changed.wait(), 10)
            assert seen == [b"one", b"two"]
        finally:
            await watch.stop()

    asyncio.run(scenario())


def test_inotify_alone_sees_a_write_a_replacement_and_a_removal(tmp_path, monkeypatch):
    monkeypatch.setattr(watch_module, "POLL_INTERVAL", 3600)  # no poll to stand in
    path = tmp_path / "watched.json"

    async def scenario() -> list[Signature | None]:
        seen: list[Signature | None] = []
        changed = asyncio.Event()

        def check() -> None:
            now = signature(path)
            if not seen or now != seen[-1]:
                seen.append(now)
                changed.set()

        async def after(change: Callable[[], object]) -> None:
            changed.clear()
            change()
            await asyncio.wait_for(changed.wait(), 10)

        watch = FileWatch(path, check, "test-poll")
        await watch.start()
        try:
            await after(lambda: path.write_bytes(b"one"))  # created, written in place, closed
            await after(lambda: path.write_bytes(b"three"))
            other = tmp_path / "other.json"
            other.write_bytes(b"two")
            await after(lambda: other.replace(path))  # as KeyFile writes it
            await after(path.unlink)
            return seen
        finally:
            await watch.stop()

    seen = asyncio.run(scenario())
    assert [s and s[2] for s in seen] == [3, 5, 3, None]


def test_writes_to_another_file_of_the_folder_do_not_wake_the_watch(tmp_path, monkeypatch):
    """As the analytics database's WAL is written beside apikeys.json: each write would be an
    event for the watching thread to read and dispatch."""
    monkeypatch.setattr(watch_module, "POLL_INTERVAL", 3600)
    path = tmp_path / "watched.json"
    busy = tmp_path / "analytics.db-wal"
    busy.write_bytes(b"")
    noticed: list[str] = []
    dispatch = watch_module._Notice.on_any_event

    def counting(self, event):
        noticed.append(os.fsdecode(event.src_path))
        dispatch(self, event)

    monkeypatch.setattr(watch_module._Notice, "on_any_event", counting)

    async def scenario() -> None:
        changed = asyncio.Event()
        watch = FileWatch(path, changed.set, "test-poll")
        await watch.start()
        try:
            for _ in range(200):
                wal.write(b"page" * 1024)
                await asyncio.sleep(0)  # the watch's thread may read in between
            path.write_bytes(b"{}")  # then the watched file: its event follows the writes
            await asyncio.wait_for(changed.wait(), 10)
        finally:
            await watch.stop()

    with busy.open("ab", buffering=0) as wal:  # closed once the watch has stopped
        asyncio.run(scenario())
    assert str(busy) not in noticed and str(path) in noticed
