"""The proxy's view of `data/upstreams.json`: which upstreams and aliases it serves, kept
current within a second without a restart (the file watched as `apikeys.json` is, see
shared/watch.py).

While there is no file, TARGET_URLS says what the upstreams are (ids `target-1`...) and there
are no aliases. A file that stops parsing, or names a TLS file that cannot be read, leaves what
was served in force; the error is logged and reported in the heartbeat (`fleet_error`, which
/healthz shows) until a good file comes.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from services.proxy.catalog import Catalog
from shared.fleet import Alias, FleetError, read_fleet
from shared.targets import Upstream
from shared.watch import FileWatch, signature

log = logging.getLogger("proxy.fleet")


class FleetWatch:
    def __init__(self, path: Path, seed: tuple[Upstream, ...]) -> None:
        self.path = path
        self.seed = tuple(replace(u, id=f"target-{u.index}") for u in seed)
        self.last_error: str | None = None
        self.catalog: Catalog | None = None
        self._signature: tuple[int, int, int] | None = (-1, -1, -1)  # never read
        self._watch = FileWatch(path, self.reload, "fleet-poll")

    async def start(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.reload()
        await self._watch.start()

    async def stop(self) -> None:
        await self._watch.stop()

    def reload(self) -> None:
        """Apply the file if it changed since the last look."""
        now = signature(self.path)
        if now == self._signature:
            return
        self._signature = now
        upstreams: tuple[Upstream, ...]
        aliases: list[Alias]
        try:
            fleet = read_fleet(self.path)
            if fleet is None:
                upstreams, aliases = self.seed, []
            else:
                upstreams, aliases = fleet.targets(), fleet.aliases
            assert self.catalog is not None
            self.catalog.apply(upstreams, aliases)
        except (FleetError, ValueError) as exc:
            if str(exc) != self.last_error:
                log.error(
                    "upstreams unusable; serving the last good ones",
                    extra={"fields": {"error": str(exc)}},
                )
            self.last_error = str(exc)
            return
        source = "TARGET_URLS" if fleet is None else self.path.name
        log.info(
            "upstreams loaded",
            extra={
                "fields": {"source": source, "upstreams": len(upstreams), "aliases": len(aliases)}
            },
        )
        if self.last_error is not None:
            log.info("upstreams readable again")
        self.last_error = None
