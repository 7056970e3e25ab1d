"""The model catalog: which upstream serves which models, and whether it is healthy.

Each upstream's `/models` is fetched in the background, all upstreams at once, each with its own
timeout, so a hanging upstream never holds up the others or a request. An upstream that fails a
refresh is marked unhealthy but keeps its last known models for `MODELS_STALE_SECONDS`; after
that it serves nothing until it answers again. Health also follows real traffic: a refused
connection marks an upstream unhealthy at once, a good answer marks it healthy. An upstream that
keeps failing requests is cooled down and probed back in by its circuit
(services/proxy/cooldown.py); `available` says whether it is worth choosing now. `on_health`
(the webhooks) hears of an upstream going down or cooling down, and of it back.

The list of upstreams and the aliases change at runtime (`apply`, from data/upstreams.json, see
services/proxy/fleet.py): an upstream whose settings did not change keeps its state (models,
health, queue); a new or changed one is asked for its models at once, and one at the same URL
keeps the models it had until then. A request already on its way keeps the state it was given,
so one sent to a removed upstream finishes there.

An upstream with a `models` filter lists, and is chosen for, only the models it matches.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.proxy.board import Board
from services.proxy.board_circuits import BoardCircuits
from services.proxy.board_counters import BoardCounters
from services.proxy.circuit_store import CircuitStore, MemoryCircuits
from services.proxy.cooldown import Circuit, Phase
from services.proxy.counters import Counters
from services.proxy.endpoints import credentials, endpoint_for
from services.proxy.gate import Gate
from services.proxy.latency import Latencies
from services.proxy.upstream import (
    Busy,
    CertificateRefused,
    ConnectFailed,
    Endpoint,
    UpstreamClient,
    UpstreamError,
)
from services.proxy.upstream_limits import Rates, UpstreamLimits
from services.proxy.usage import tokens_used
from shared.analytics import RequestRow
from shared.fleet import Alias
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
    listed: list[dict[str, Any]] = field(default_factory=list)  # before its `models` filter
    cool_until: float = 0.0  # time.monotonic() before which its Retry-After asks for none
    circuit: Circuit = field(default_factory=Circuit)  # cooled down after failures in a row
    rates: Rates | None = None  # its request and token limits (services/proxy/upstream_limits.py)

    @property
    def available(self) -> bool:
        """Worth choosing now: its models answer and it is not cooling down (nor being probed
        by a request of this worker)."""
        return self.healthy and self.circuit.admits(self.in_flight)

    def use(self, listed: list[dict[str, Any]]) -> None:
        """Take the models it lists, as far as its `models` filter lets them through."""
        self.listed = listed
        patterns = self.upstream.models
        if patterns is not None:
            allowed = re.compile("|".join(fnmatch.translate(p) for p in patterns))
            listed = [m for m in listed if allowed.fullmatch(m["id"])]
        self.models, self.model_ids = listed, frozenset(m["id"] for m in listed)

    def report(self) -> dict[str, Any]:
        queued = 0 if self.gate is None else self.gate.queued
        circuit = self.circuit
        circuit.sync()  # what every worker says, even of an upstream this one does not use
        remaining = circuit.remaining()
        return {
            "id": self.upstream.id,
            "url": self.upstream.url,
            "healthy": self.healthy,
            "models": sorted(self.model_ids),
            "in_flight": self.in_flight - queued,
            "queued": queued,
            "concurrency": self.upstream.concurrency or None,
            "last_ok": self.last_ok,
            "last_error": self.last_error,
            "circuit": circuit.current().value,
            "failures": circuit.failures,
            "cooling_until": None if remaining is None else round(time.time() + remaining, 3),
            "last_failure": circuit.last_failure,
        }


class Turn:
    """A request's turn at an upstream (`Catalog.turn`): in its fair queue, then in flight,
    then its end told to the catalog, whatever happens (a wait cancelled included)."""

    __slots__ = ("_catalog", "_probe", "_row", "_state")

    def __init__(
        self, catalog: Catalog, state: UpstreamState, row: RequestRow, probe: float | None
    ) -> None:
        self._catalog, self._state, self._row, self._probe = catalog, state, row, probe

    async def __aenter__(self) -> None:
        state, row = self._state, self._row
        if state.gate is not None:
            state.in_flight += 1  # counted while queued, so that routing spreads the queues
            try:
                waited = await state.gate.enter(row.key_id)
            except BaseException:
                self._end()  # never sent
                raise
            finally:
                state.in_flight -= 1
            row.queue_ms = (row.queue_ms or 0.0) + waited * 1000
        state.in_flight += 1

    async def __aexit__(self, *_: object) -> None:
        state = self._state
        state.in_flight -= 1
        if state.gate is not None:
            state.gate.leave()
        self._end()

    def _end(self) -> None:
        """Charge the tokens of its answer (none for an error's), and give up the probe it
        was, if no verdict came."""
        state, row, limits = self._state, self._row, self._catalog.limits
        rates = state.rates
        if rates is not None and rates.tokens and limits is not None and row.status < 400:
            limits.charge(rates, tokens_used(row, None))
        if self._probe is not None:
            state.circuit.unclaim(self._probe)


class Catalog:
    def __init__(
        self,
        settings: Settings,
        client: UpstreamClient,
        board: Board | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.clock: Callable[[], float] = time.monotonic  # the circuits' (tests set their own)
        self.board = board  # where the upstreams' circuits count (none: in this worker)
        # where capped upstreams' fair queues and upstreams' limits count: `counters`, else the
        # board (none: neither)
        self.counters = counters if counters is not None or board is None else BoardCounters(board)
        self.limits = None if self.counters is None else UpstreamLimits(self.counters)
        # The upstreams' circuits: shared by the workers on the board, else this worker's.
        self.circuits: CircuitStore = MemoryCircuits() if board is None else BoardCircuits(board)
        self.latencies = Latencies()  # of the deployments of aliases chosen by latency
        self.states = [self._state(u) for u in settings.target_urls]
        self.aliases: dict[str, Alias] = {}
        # Told of each change of an upstream's health: its state and the error, if down.
        self.on_health: Callable[[UpstreamState, str | None], None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._last_refresh = -MIN_REFRESH_INTERVAL
        self._newcomers: set[asyncio.Task[None]] = set()
        self.refreshed = False  # True once every upstream has been asked at least once

    def _state(self, upstream: Upstream) -> UpstreamState:
        """A new upstream's state. Raises ValueError for TLS files that cannot be read."""
        endpoint = endpoint_for(upstream, self.settings)
        state = UpstreamState(upstream, endpoint, credentials(upstream))
        state.rates = Rates.of(upstream)
        s = self.settings
        state.circuit = Circuit(
            s.upstream_failures,
            s.upstream_cooldown,
            s.upstream_cooldown_max,
            self._now,
            self.circuits,
            "circuit:" + upstream.url,  # as every worker names it, whatever its id
            probe_limit=s.upstream_connect_timeout + s.upstream_read_timeout,
        )
        if upstream.concurrency and self.counters is not None:
            s = self.settings
            state.gate = Gate(
                self.counters,
                upstream.url,
                upstream.concurrency,
                s.queue_limit,
                s.queue_timeout,
                label=upstream.label,
            )
        return state

    # Changes -----------------------------------------------------------------------------

    def apply(self, upstreams: tuple[Upstream, ...], aliases: list[Alias]) -> None:
        """Serve these upstreams and aliases from now on. Raises ValueError (nothing changed)
        for an upstream whose TLS files cannot be read."""
        kept = {state.upstream: state for state in self.states}  # equal: the same settings
        by_url = {state.upstream.url: state for state in self.states}
        states, new = [], []
        for upstream in upstreams:
            state = kept.pop(upstream, None)
            if state is None:
                state = self._state(upstream)
                if (before := by_url.get(upstream.url)) is not None:
                    state.use(before.listed)
                    state.healthy, state.last_ok = before.healthy, before.last_ok
                    state.circuit = before.circuit
                new.append(state)
            else:
                state.upstream = upstream  # its position and id may have changed
                if state.gate is not None:
                    state.gate.label = upstream.label
            states.append(state)
        self.states = states
        self.aliases = {alias.name: alias for alias in aliases}
        self.latencies.watch(aliases)
        if new:
            task = asyncio.create_task(self._refresh_some(new), name="models-refresh-new")
            self._newcomers.add(task)
            task.add_done_callback(self._newcomers.discard)
        if not states:
            log.error("no upstreams: set TARGET_URLS or add one in the admin UI")

    async def _refresh_some(self, states: list[UpstreamState]) -> None:
        await asyncio.gather(*(self._refresh_one(state) for state in states))

    async def settled(self) -> None:
        """Wait until the upstreams added by `apply` have been asked for their models."""
        while self._newcomers:
            await asyncio.gather(*self._newcomers, return_exceptions=True)

    # Lookups -----------------------------------------------------------------------------

    def serving(self, model: str) -> list[UpstreamState]:
        return [s for s in self.states if model in s.model_ids]

    def unknown(self) -> list[UpstreamState]:
        """Upstreams whose models are unknown because they could not be asked."""
        return [s for s in self.states if not s.model_ids and s.last_error is not None]

    def models(self) -> list[dict[str, Any]]:
        """The aliases, then the union of every upstream's models, in order of first
        appearance; where several upstreams list one id, the first one's object is shown."""
        seen: dict[str, dict[str, Any]] = {name: alias_object(name) for name in self.aliases}
        for state in self.states:
            for model in state.models:
                seen.setdefault(model["id"], model)
        return list(seen.values())

    def find(self, model_id: str) -> dict[str, Any] | None:
        if model_id in self.aliases:
            return alias_object(model_id)
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

    async def turn(self, state: UpstreamState, row: RequestRow) -> Turn:
        """The turn of `row`'s request at the upstream: counted against its limits now, or
        AtLimit (nothing counted: the next candidate's turn), and the upstream's probe if that
        is due. Entered (`async with`), it waits in the upstream's fair queue, if it has one,
        and counts in flight until it ends."""
        rates = state.rates
        if rates is not None and self.limits is not None:
            await self.limits.take(rates)
        return Turn(self, state, row, state.circuit.claim())

    def _now(self) -> float:
        return self.clock()

    def answered(self, state: UpstreamState, status: int) -> None:
        """The upstream answered a request with `status` (its start, before the body)."""
        self.mark_up(state)
        if status >= 500 and status != 501:  # 501: that route is not the upstream's, it is up
            self._failed(state, f"HTTP {status}")
        elif state.circuit.succeeded():
            log.info("upstream serving again", extra={"fields": {"upstream": state.upstream.url}})
            if self.on_health is not None:
                self.on_health(state, None)

    def failed(self, state: UpstreamState, exc: UpstreamError) -> None:
        """A request to the upstream failed before its answer started. Every connection to it
        in use (`Busy`) is this worker's limit, not the upstream's fault."""
        if isinstance(exc, Busy):
            return
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ConnectFailed):
            self.mark_down(state, f"connect: {exc}")
        self._failed(state, text)

    def _failed(self, state: UpstreamState, reason: str) -> None:
        circuit = state.circuit
        probe = circuit.current() is Phase.PROBING
        if circuit.failed(reason):
            if not probe and state.healthy and self.on_health is not None:  # else told already
                self.on_health(state, f"cooling down after {circuit.failures} failures: {reason}")
            log.warning(
                "upstream probe failed; cooling down" if probe else "upstream cooling down",
                extra={
                    "fields": {
                        "upstream": state.upstream.url,
                        "failures": circuit.failures,
                        "seconds": circuit.period,
                        "error": reason,
                    }
                },
            )

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
        """Refresh unless one ran in the last MIN_REFRESH_INTERVAL seconds (after the
        upstreams just added have answered, which may have been all it took)."""
        await self.settled()
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
        state.use(models)
        state.last_ok, state.last_error, state.refusal = time.time(), None, None
        self.mark_up(state)

    def _refresh_failed(self, state: UpstreamState, error: str) -> None:
        self.mark_down(state, error)
        stale = state.last_ok is None or (
            time.time() - state.last_ok > self.settings.models_stale_seconds
        )
        if stale and state.listed:
            log.warning(
                "upstream models dropped",
                extra={"fields": {"upstream": state.upstream.url, "models": len(state.models)}},
            )
            state.use([])


def alias_object(name: str) -> dict[str, Any]:
    """An alias as `/v1/models` shows it."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmp"}
