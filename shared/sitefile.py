"""The site and certd's status in files (`shared.sitestore.SiteStore`, the embedded default):
`data/site.json`, written by the api under its lock, and `data/certd/status.json`, written by
certd. certd notices changes of site.json through watchdog (inotify), with a cheap `stat()`
poll of `signature()` as a safety net where inotify does not reach.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path

from shared.site import CertdStatus, Site, read_site, read_status, update_site, write_status
from shared.watch import observe, signature


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
        observer = observe(self.site_file, wake)

        def stop() -> None:
            observer.stop()
            observer.join(5)

        return stop
