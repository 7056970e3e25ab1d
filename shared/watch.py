"""Noticing that a file in data/ changed, within a second: how a proxy worker follows the files
the api writes (`apikeys.json`, `upstreams.json`).

watchdog (inotify) calls `check` as soon as the folder reports an event on the file's name; a
`stat()` poll every POLL_INTERVAL calls it too, as a safety net where inotify does not reach
(some bind mounts). `check` runs on the event loop and decides cheaply (`signature`) whether
there is anything to read.

The kernel is asked only for the events that end a change of a file (created, moved in or out,
deleted, closed after writing: `EVENTS`), never for each write: data/ also holds analytics.db,
whose every WAL write would otherwise wake a thread in every process watching the folder (under
load, that thread took a tenth of a proxy worker's time). A change made without closing the
file (or `touch`) is seen by the poll.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

POLL_INTERVAL = 0.5
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
]

Signature = tuple[int, int, int]


def signature(path: Path) -> Signature | None:
    """What changes when the file is replaced or written (None: there is no file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _Notice(FileSystemEventHandler):
    """Calls `wake` (in watchdog's thread) for an event on the file's name."""

    def __init__(self, name: str, wake: Callable[[], object]) -> None:
        self.name, self.wake = name, wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (event.src_path, getattr(event, "dest_path", ""))
        if any(os.fsdecode(p).endswith(self.name) for p in paths if p):
            self.wake()


def observe(path: Path, wake: Callable[[], object]) -> BaseObserver:
    """A started watchdog observer of `path`'s folder that calls `wake`, in its own thread, as
    `path` is created, replaced, written and closed, or removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    observer = Observer()
    observer.daemon = True
    observer.schedule(_Notice(path.name, wake), str(path.parent), event_filter=EVENTS)
    observer.start()
    return observer


class FileWatch:
    def __init__(self, path: Path, check: Callable[[], None], name: str) -> None:
        self.path = path
        self.check = check
        self.name = name  # of the poll task
        self._observer: BaseObserver | None = None
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._observer = observe(self.path, lambda: loop.call_soon_threadsafe(self.check))
        self._poller = asyncio.create_task(self._poll(), name=self.name)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.check()

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join, 5)
