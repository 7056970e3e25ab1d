"""The model catalog: which upstream serves which models, and whether it is healthy.

Each upstream's `/models` is fetched in the background, all upstreams at once, each with its own
timeout, so a hanging upstream never holds up the others or a request. An upstream that fails a
refresh is marked unhealthy but keeps its last known models for `MODELS_STALE_SECONDS`; after
that it serves nothing until it answers again. Health also follows real traffic: a refused
connection marks an upstream unhealthy at once, a good answer marks it healthy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.proxy.endpoints import credentials, endpoint_for
from services.proxy.gate import Gate
from services.proxy.upstream import CertificateRefused, Endpoint, UpstreamClient, UpstreamError
from shared.settings import Settings
from shared.targets import Upstream

log = logging.getLogger("proxy.catalog")

# An on-demand refresh (for a model nobody lists) happens at most this often.
MIN_REFRESH_INTERVAL = 5.0
# While an upstream is down, the next refresh comes after this, then twice as long each time
# up to DOWN_RETRY_MAX (or MODELS_REFRESH_SECONDS if shorter): one that comes up is listed
# within seconds, not a minute.
DOWN_RETRY_SECONDS = 1.0
DOWN_RETRY_MAX = 16.0


@dataclass(eq=False)
class UpstreamState:
    upstream: Upstream
    endpoint: Endpoint  # where and how to connect (shared.targets + services.proxy.endpoints)
    auth: tuple[tuple[bytes, bytes], ...] = ()  # the header with its credentials
    models: list[dict[str, Any]] = field(default_factory=list)
    model_ids: frozenset[str] = frozenset()
    healthy: bool = True  # optimistic until the first refresh says otherwise
    last_ok: float | None = None
    last_error: str | None = None
    in_flight: int = 0  # in this worker, queued included
    gate: Gate | None = None  # the fair queue, for an upstream with a concurrency cap
    refusal: str | None = None  # why its models are unknown, when that is worth telling clients

    def report(self) -> dict[str, Any]:
        queued = 0 if self.gate is None else self.gate.queued
        return {
            "url": self.upstream.url,
            "healthy": self.healthy,
            "models": sorted(self.model_ids),
            "in_flight": self.in_flight - queued,
            "queued": queued,
            "concurrency": self.upstream.concurrency or None,
            "last_ok": self.last_ok,
            "last_error": self.last_error,
        }


class Catalog:
    def __init__(self, settings: Settings, client: UpstreamClient) -> None:
        self.settings = settings
        self.client = client
        self.states = [
            UpstreamState(u, endpoint_for(u, settings), credentials(u))
            for u in settings.target_urls
        ]
        # Told of each change of an upstream's health: its state and the error, if down.
        self.on_health: Callable[[UpstreamState, str | None], None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._last_refresh = -MIN_REFRESH_INTERVAL
        self.refreshed = False  # True once every upstream has been asked at least once

    # Lookups -----------------------------------------------------------------------------

    def serving(self, model: str) -> list[UpstreamState]:
        return [s for s in self.states if model in s.model_ids]

    def unknown(self) -> list[UpstreamState]:
        """Upstreams whose models are unknown because they could not be asked."""
        return [s for s in self.states if not s.model_ids and s.last_error is not None]

    def models(self) -> list[dict[str, Any]]:
        """The union of every upstream's models, in order of first appearance; where several
        upstreams list one id, the first one's object is shown."""
        seen: dict[str, dict[str, Any]] = {}
        for state in self.states:
            for model in state.models:
                seen.setdefault(model["id"], model)
        return list(seen.values())

    def find(self, model_id: str) -> dict[str, Any] | None:
        for state in self.states:
            for model in state.models:
                if model["id"] == model_id:
                    return model
        return None

    # Health from traffic -------------------------------------------------------------------

    def mark_down(self, state: UpstreamState, error: str) -> None:
        was_healthy = state.healthy
        if was_healthy:
            log.warning(
                "upstream down", extra={"fields": {"upstream": state.upstream.url, "error": error}}
            )
        state.healthy = False
        state.last_error = error
        if was_healthy and self.on_health is not None:
            self.on_health(state, error)

    def mark_up(self, state: UpstreamState) -> None:
        if not state.healthy:
            log.info("upstream up", extra={"fields": {"upstream": state.upstream.url}})
            state.healthy = True
            if self.on_health is not None:
                self.on_health(state, None)

    # Refreshing --------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh forever, every MODELS_REFRESH_SECONDS; sooner while an upstream is down."""
        retry = DOWN_RETRY_SECONDS
        while True:
            await self.refresh()
            delay = self.settings.models_refresh_seconds
            if all(state.healthy for state in self.states):
                retry = DOWN_RETRY_SECONDS
            else:
                delay, retry = min(retry, delay), min(retry * 2, DOWN_RETRY_MAX)
            await asyncio.sleep(delay)

    async def refresh(self) -> None:
        """Refresh every upstream now; concurrent callers share one refresh."""
        if self._refreshing is None or self._refreshing.done():
            self._last_refresh = time.monotonic()
            self._refreshing = asyncio.create_task(self._refresh_all(), name="models-refresh")
        await asyncio.shield(self._refreshing)

    async def refresh_soon(self) -> None:
        """Refresh unless one ran in the last MIN_REFRESH_INTERVAL seconds."""
        running = self._refreshing is not None and not self._refreshing.done()
        if running or time.monotonic() - self._last_refresh >= MIN_REFRESH_INTERVAL:
            await self.refresh()

    async def _refresh_all(self) -> None:
        await asyncio.gather(*(self._refresh_one(state) for state in self.states))
        self.refreshed = True

    async def _refresh_one(self, state: UpstreamState) -> None:
        upstream = state.upstream
        headers = [(b"accept", b"application/json"), *state.auth]
        try:
            status, body = await self.client.fetch(
                state.endpoint,
                upstream.path.encode() + b"/models",
                headers,
                self.settings.models_timeout_seconds,
            )
            if status != 200:
                raise ValueError(f"HTTP {status}")
            document = json.loads(body)
            models = [
                m
                for m in document.get("data") or []
                if isinstance(m, dict) and isinstance(m.get("id"), str)
            ]
        except (UpstreamError, TimeoutError, ValueError, AttributeError) as exc:
            if isinstance(exc, CertificateRefused):
                state.refusal = "its TLS certificate was refused"
            self._refresh_failed(state, f"models: {type(exc).__name__} {exc}".strip())
            return
        state.models, state.model_ids = models, frozenset(m["id"] for m in models)
        state.last_ok, state.last_error, state.refusal = time.time(), None, None
        self.mark_up(state)

    def _refresh_failed(self, state: UpstreamState, error: str) -> None:
        self.mark_down(state, error)
        stale = state.last_ok is None or (
            time.time() - state.last_ok > self.settings.models_stale_seconds
        )
        if stale and state.models:
            log.warning(
                "upstream models dropped",
                extra={"fields": {"upstream": state.upstream.url, "models": len(state.models)}},
            )
            state.models, state.model_ids = [], frozenset()
