"""A proxy worker's long-lived resources, in one typed object built in the lifespan.

`Runtime.start(settings)` builds them (the upstream client, the board and the catalog with its
upstreams' fair queues, the limiter, budgets and webhooks, the key store and the requests open
per key, the fleet watch, the recorder, metrics, tracing and the heartbeat) and starts their
background tasks, each named; `close()` stops the tasks and closes everything. A request reads
them from here and from nowhere else, so the proxy can be driven in-process: run the app's
lifespan (or hand `ProxyApp` a Runtime) and call it with hand-written `receive` and `send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from services.proxy import alerts, tracing
from services.proxy.board import Board
from services.proxy.budgets import Budgets, PriceBook
from services.proxy.catalog import Catalog
from services.proxy.clients import create_client
from services.proxy.counters import Counters, open_counters
from services.proxy.fleet import FleetWatch
from services.proxy.keys import KeyStore
from services.proxy.limits import Limiter
from services.proxy.metrics import FLUSH_INTERVAL, ProxyMetrics
from services.proxy.recorder import Recorder
from services.proxy.revocation import OpenRequests
from services.proxy.tracing import Tracing
from services.proxy.upstream import UpstreamClient
from shared import storage
from shared.heartbeat import INTERVAL, STALE_AFTER, Heartbeat, read_heartbeats
from shared.settings import Settings
from shared.usagelog import UsageLog
from shared.webhooks import Webhooks

log = logging.getLogger("proxy")


@dataclass(eq=False)
class Runtime:
    settings: Settings
    loop: asyncio.AbstractEventLoop
    client: UpstreamClient  # wrapped by `tracing` when OTLP is configured
    board: Board  # what the workers of this machine share: budgets, upstream limits, circuits
    counters: Counters  # where keys' limits and fair queues count: the board, or Redis
    catalog: Catalog  # the upstreams, their models, health and fair queues (`Gate`)
    limiter: Limiter
    budgets: Budgets
    keys: KeyStore
    open: OpenRequests  # the requests in flight per key, ended when their key is revoked
    fleet: FleetWatch
    recorder: UsageLog
    metrics: ProxyMetrics
    heartbeat: Heartbeat
    webhooks: Webhooks | None = None  # None unless WEBHOOK_URLS are set
    tracing: Tracing | None = None  # None unless OTLP is configured
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        keys = KeyStore(storage.key_feed(settings))
        recorder = storage.usage_log(settings) or Recorder(
            settings.analytics_db,
            settings.analytics_retention_days,
            keys.keys,
            settings.analytics_rollup_retention_days,
        )
        traced = tracing.from_environment()
        client = create_client(settings)
        if traced is not None:
            client = traced.wrap(client)
        board = Board(settings.board_file)
        counters = open_counters(settings, board)
        counters.start()
        catalog = Catalog(settings, client, board, counters)
        limiter = Limiter(counters)
        ledger = None
        if settings.redis_url:  # imported only then: redis-py loads OpenTelemetry if installed
            from services.proxy.redis_counters import RedisCounters

            assert isinstance(counters, RedisCounters)
            ledger = counters
        budgets = Budgets(
            board,
            settings.analytics_db,
            PriceBook(settings.prices_file),
            ledger,
            ledger.history if ledger is not None else None,
        )
        runtime = cls(
            settings=settings,
            loop=asyncio.get_running_loop(),
            client=client,
            board=board,
            counters=counters,
            catalog=catalog,
            limiter=limiter,
            budgets=budgets,
            keys=keys,
            open=OpenRequests(),
            fleet=FleetWatch(settings.fleet_file, settings.target_urls),
            recorder=recorder,
            metrics=ProxyMetrics(CollectorRegistry()),
            heartbeat=Heartbeat(settings.run_dir, "proxy", f"proxy-{os.getpid()}"),
            webhooks=alerts.attach(settings, catalog, limiter, budgets),
            tracing=traced,
        )
        keys.on_change = runtime._revoke_open
        await runtime.fleet.start(catalog)
        await keys.start()
        await recorder.start()
        _forget_dead_workers(settings)
        runtime.tasks = [
            asyncio.create_task(catalog.run(), name="models-refresh-loop"),
            asyncio.create_task(runtime._beat(), name="proxy-heartbeat"),
            asyncio.create_task(runtime._flush_metrics(), name="metrics-flush"),
        ]
        return runtime

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.metrics.flush()
        await self.keys.stop()
        await self.fleet.stop()
        await self.recorder.close()
        if self.webhooks is not None:
            await asyncio.to_thread(self.webhooks.close)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.close)
        await self.client.close()
        await self.counters.aclose()  # closes the board too
        self.heartbeat.remove()

    def _revoke_open(self) -> None:
        if cancelled := self.open.revoke(self.keys.usable()):
            log.info("requests of revoked keys ended", extra={"fields": {"count": cancelled}})

    async def _beat(self) -> None:
        failing: str | None = None  # logged once until it changes or passes
        while True:
            self.heartbeat.state = {
                "keys": len(self.keys),
                "last_error": self.keys.last_error
                or self.fleet.last_error
                or self.recorder.last_error
                or self.counters.last_error,
                "keys_error": self.keys.last_error,
                "fleet_error": self.fleet.last_error,
                # the counter store's (Redis away: limits counted on this machine)
                "limits_error": self.counters.last_error,
                "limits_replicas": self.counters.replicas,  # what a share divides limits by
                "keys_version": self.keys.version,
                "keys_staleness": round(self.keys.staleness(), 1),
                "analytics_pending": self.recorder.pending,
                "analytics_dropped": self.recorder.dropped,
                "upstreams": [s.report() for s in self.catalog.states],
            }
            try:  # in a thread: its fsync must not hold up the event loop
                await asyncio.to_thread(self.heartbeat.beat)
            except OSError as exc:
                if str(exc) != failing:
                    log.error("heartbeat not written", extra={"fields": {"error": exc}})
                failing = str(exc)
            else:
                if failing is not None:
                    log.info("heartbeat written again")
                failing = None
            await asyncio.sleep(INTERVAL)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.metrics.flush()


def _forget_dead_workers(settings: Settings) -> None:
    """Remove heartbeats that proxy workers gone long ago left behind."""
    for beat in read_heartbeats(settings.run_dir):
        old = time.time() - float(beat.get("updated", 0)) > 10 * STALE_AFTER
        if beat.get("program") == "proxy" and old:
            # Gone already, or a read-only disk: neither may stop the proxy from starting.
            with contextlib.suppress(OSError):
                (settings.run_dir / f"{beat['name']}.json").unlink()
