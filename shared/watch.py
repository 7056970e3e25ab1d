"""Noticing that a file in data/ changed, within a second: how a proxy worker follows the files
the api writes (`apikeys.json`, `upstreams.json`).

watchdog (inotify) calls `check` as soon as the folder reports an event on the file's name; a
`stat()` poll every POLL_INTERVAL calls it too, as a safety net where inotify does not reach
(some bind mounts). `check` runs on the event loop and decides cheaply (`signature`) whether
there is anything to read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

POLL_INTERVAL = 0.5

Signature = tuple[int, int, int]


def signature(path: Path) -> Signature | None:
    """What changes when the file is replaced or written (None: there is no file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class FileWatch:
    def __init__(self, path: Path, check: Callable[[], None], name: str) -> None:
        self.path = path
        self.check = check
        self.name = name  # of the poll task
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        watch = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = (event.src_path, getattr(event, "dest_path", ""))
                if any(os.fsdecode(p).endswith(watch.path.name) for p in paths if p):
                    loop.call_soon_threadsafe(watch.check)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.daemon = True
        observer.schedule(Handler(), str(self.path.parent), recursive=False)
        observer.start()
        self._observer = observer
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
