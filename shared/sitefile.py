"""The site and certd's status in files (`shared.sitestore.SiteStore`, the embedded default):
`data/site.json`, written by the api under its lock, and `data/certd/status.json`, written by
certd. certd notices changes of site.json through watchdog (inotify), with a cheap `stat()`
poll of `signature()` as a safety net where inotify does not reach.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from shared.site import CertdStatus, Site, read_site, read_status, update_site, write_status
from shared.watch import signature


class _Wake(FileSystemEventHandler):
    def __init__(self, name: str, wake: Callable[[], None]) -> None:
        self.name, self.wake = name, wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (event.src_path, getattr(event, "dest_path", ""))
        if any(os.fsdecode(p).endswith(self.name) for p in paths if p):
            self.wake()


class SiteFile:
    def __init__(self, site_file: Path, status_file: Path) -> None:
        self.site_file = site_file
        self.status_file = status_file

    def read_site(self) -> Site:
        return read_site(self.site_file)

    def has_site(self) -> bool:
        return self.site_file.exists()

    def update_site(self, change: Callable[[Site], Site]) -> Site:
        return update_site(self.site_file, change)

    def read_status(self) -> CertdStatus | None:
        return read_status(self.status_file)

    def own_status(self) -> CertdStatus | None:
        return read_status(self.status_file)

    def write_status(self, status: CertdStatus) -> None:
        write_status(self.status_file, status)

    def beat(self) -> None:
        pass  # certd's heartbeat file says it (shared.heartbeat)

    def signature(self) -> Hashable:
        return signature(self.site_file)

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        self.site_file.parent.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.daemon = True
        observer.schedule(_Wake(self.site_file.name, wake), str(self.site_file.parent))
        observer.start()

        def stop() -> None:
            observer.stop()
            observer.join(5)

        return stop
