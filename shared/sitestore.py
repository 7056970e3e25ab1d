"""The site and certd's status, as every implementation keeps them (see `shared.site` for what
they hold).

- `read_site()` / `update_site(change)`: the desired state, written only by the api (and the
  `llmp` command), read-modify-written under one lock with the next generation, so two writers
  never lose each other's change. A store that cannot be read raises `SiteError`.
- `read_status()`: certd's report as the admin sees it, the same from every replica: with
  several replicas, the sum of every live replica's (`shared.site.merge_statuses`: applied only
  once applied everywhere, an error anywhere is an error).
- `own_status()` / `write_status(status)`: this replica's certd's own report (certd is its
  only writer); `beat()` says it is still alive, where liveness is kept in the store.
- `signature()` and `watch(wake)`: how certd notices a change of the site. `signature()` is
  cheap and changes when the site may have changed; `watch` calls `wake()` (from another
  thread) soon after each change, until the returned `stop` is called.

The embedded implementation is `data/site.json` and `data/certd/status.json`
(`shared.sitefile.SiteFile`); with DATABASE_URL, PostgreSQL (`shared.pg.site.PgSite`).
`shared.storage.site_store` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol

from shared.site import CertdStatus, Site


class SiteStore(Protocol):
    def read_site(self) -> Site:
        """The desired site (the empty site if none was ever written). Raises SiteError."""

    def has_site(self) -> bool:
        """Was a site ever written? Raises SiteError if the store cannot say."""

    def update_site(self, change: Callable[[Site], Site]) -> Site:
        """`change` applied to the site and saved with the next generation; returns it.
        `change` may raise (SiteError) to write nothing. Raises SiteError or OSError if the
        store cannot be read or written."""

    def read_status(self) -> CertdStatus | None:
        """certd's report as the admin sees it; None if no certd has reported (or the report
        cannot be read)."""

    def own_status(self) -> CertdStatus | None:
        """This replica's certd's last report, None if there is none."""

    def write_status(self, status: CertdStatus) -> None:
        """This replica's certd's report. Raises OSError if it cannot be saved."""

    def beat(self) -> None:
        """This replica's certd is alive (called every few seconds; may do nothing)."""

    def signature(self) -> Hashable:
        """Changes when the site may have changed since the last call that returned it."""

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake()` soon after each change of the site; returns what stops it."""
