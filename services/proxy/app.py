"""The proxy's ASGI application: `/v1/*` for API-key holders.

Per request: check the key and its policy, read the body (at most PAYLOAD_LIMIT), answer
`/v1/models` from the catalog (the models the key may use) or check the model and the key's
limits, pick upstreams and hand over to `forward.exchange`, then queue one analytics row and log
one line. A client that goes away cancels the work at once, upstream request included.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import secrets
import time
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.middleware.cors import CORSMiddleware

from services.proxy import alerts, aliases, attribution, errors, fallbacks, routing, tracing
from services.proxy.asgi import (
    ClientGone,
    DisconnectWatch,
    Receive,
    Response,
    Send,
    discard_body,
    read_body,
    request_headers,
    send_body,
    send_json,
    sse_error,
)
from services.proxy.board import Board
from services.proxy.body import RequestBody
from services.proxy.budgets import Budgets, PriceBook
from services.proxy.catalog import Catalog, UpstreamState
from services.proxy.clients import create_client
from services.proxy.errors import ProxyError
from services.proxy.fleet import FleetWatch
from services.proxy.forward import UpstreamCut, exchange
from services.proxy.keys import KeyStore
from services.proxy.limits import Limiter, Policy
from services.proxy.metrics import FLUSH_INTERVAL, ProxyMetrics
from services.proxy.recorder import Recorder
from services.proxy.revocation import OpenRequests
from services.proxy.upstream import UpstreamClient
from services.proxy.usage import Meter, ask_for_usage, tokens_used
from shared import logs, storage
from shared.analytics import RequestRow
from shared.cors import cors_options
from shared.heartbeat import INTERVAL, STALE_AFTER, Heartbeat, read_heartbeats
from shared.logs import setup_logging
from shared.settings import Settings, get_settings
from shared.usagelog import UsageLog
from shared.webhooks import Webhooks

log = logging.getLogger("proxy")


class ProxyApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyStore(storage.key_feed(settings))
        self.open = OpenRequests()
        self.keys.on_change = self._revoke_open
        self.fleet = FleetWatch(settings.fleet_file, settings.target_urls)
        self.metrics = ProxyMetrics(CollectorRegistry())
        self.recorder: UsageLog = storage.usage_log(settings) or Recorder(
            settings.analytics_db,
            settings.analytics_retention_days,
            self.keys.keys,
            settings.analytics_rollup_retention_days,
        )
        self.client: UpstreamClient | None = None  # the upstream client, built in the lifespan
        self.loop: asyncio.AbstractEventLoop | None = None
        self.catalog: Catalog | None = None
        self.limiter: Limiter | None = None
        self.budgets: Budgets | None = None
        self.webhooks: Webhooks | None = None
        self.tracing = tracing.from_environment()  # None unless OTLP is configured
        self._tasks: list[asyncio.Task[None]] = []
        # Request ids: a random prefix per process and a counter (no system call per request).
        self._id_prefix = secrets.token_hex(5)
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    # Lifespan ----------------------------------------------------------------------------

    async def lifespan(self, receive: Receive, send: Send) -> None:
        await receive()
        try:
            await self.startup()
        except Exception as exc:
            log.exception("start-up failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def startup(self) -> None:
        s = self.settings
        self.loop = asyncio.get_running_loop()
        self.client = create_client(s)
        if self.tracing is not None:
            self.client = self.tracing.wrap(self.client)
        board = Board(s.board_file)
        self.catalog = Catalog(s, self.client, board)
        self.limiter = Limiter(board)
        self.budgets = Budgets(board, s.analytics_db, PriceBook(s.prices_file))
        self.webhooks = alerts.attach(s, self.catalog, self.limiter, self.budgets)
        await self.fleet.start(self.catalog)
        await self.keys.start()
        await self.recorder.start()
        self.heartbeat = Heartbeat(s.run_dir, "proxy", f"proxy-{os.getpid()}")
        _forget_dead_workers(s)
        self._tasks = [
            asyncio.create_task(self.catalog.run(), name="models-refresh-loop"),
            asyncio.create_task(self._beat(), name="proxy-heartbeat"),
            asyncio.create_task(self._flush_metrics(), name="metrics-flush"),
        ]
        # Everything allocated so far lives as long as the worker: keep it out of the cyclic
        # collector's way, so that its full collections stay short.
        gc.freeze()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.metrics.flush()
        await self.keys.stop()
        await self.fleet.stop()
        await self.recorder.close()
        if self.webhooks is not None:
            await asyncio.to_thread(self.webhooks.close)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.close)
        if self.client is not None:
            await self.client.close()
        if self.limiter is not None:
            self.limiter.board.close()
        self.heartbeat.remove()

    async def _beat(self) -> None:
        assert self.catalog is not None
        failing: str | None = None  # logged once until it changes or passes
        while True:
            self.heartbeat.state = {
                "keys": len(self.keys),
                "last_error": self.keys.last_error
                or self.fleet.last_error
                or self.recorder.last_error,
                "keys_error": self.keys.last_error,
                "fleet_error": self.fleet.last_error,
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

    # Requests ----------------------------------------------------------------------------

    async def handle(self, scope: dict[str, Any], receive: Receive, asgi_send: Send) -> None:
        """One request, inside the last-resort error boundary: an exception nothing else
        handled is logged with its traceback and becomes an OpenAI-shaped 500 if the answer
        has not started, or the end of the connection if it has (uvicorn closes it: the client
        sees the truncation); either way its analytics row says so."""
        started = time.perf_counter()
        if self.tracing is not None:  # the client's trace context, if it sent one
            self.tracing.begin(scope["headers"], started)
        send = response = Response(asgi_send)
        request_id = f"{self._id_prefix}{next(self._ids):06x}"
        path: str = scope["path"]
        row: RequestRow | None = None
        watch: DisconnectWatch | None = None
        task = key_text = None
        unread = True  # the body: drained before a refusal is answered (see discard_body)
        try:
            if not routing.inside_v1(path):
                raise errors.not_found(path)
            key_text, content_type, declared = request_headers(scope["headers"])
            if key_text is None:
                raise errors.missing_key()
            policy = self.keys.lookup(key_text)
            if policy is None:
                raise errors.invalid_key()
            key = policy.key
            row = RequestRow(
                request_id,
                key.id,
                key.username,
                int(time.time() * 1000),
                method=scope["method"],
                path=path,
            )
            policy.check_key()
            task = self.open.enter(key_text)
            unread = False
            body = await read_body(receive, self.settings.payload_limit, declared)
            row.bytes_in = len(body)
            watch = DisconnectWatch(receive)
            await self.route(scope, body, content_type, policy, row, send, started)
        except ProxyError as exc:
            if row is not None:
                row.status, row.error = exc.status, exc.code
            else:  # refused before a key was known: no analytics row, but counted
                self.metrics.refused(exc.status)
            if not response.started:
                if unread:
                    await discard_body(receive, self.settings.payload_limit)
                await send_body(send, exc.status, exc.body(), request_id, exc.headers)
        except ClientGone:
            assert row is not None
            row.error = "client disconnected"
        except UpstreamCut:
            pass  # the answer stops short: uvicorn closes the connection, the client sees it
        except Exception as exc:
            log.exception("request failed", extra={"fields": {"id": request_id}})
            if row is not None:
                after = " after the answer started" if response.started else ""
                row.error = f"internal error{after}: {type(exc).__name__}"
                if not response.started:
                    row.status = 500
            else:
                self.metrics.refused(500)
            if not response.started:
                if unread:
                    await discard_body(receive, self.settings.payload_limit)
                error = errors.internal_error()
                await send_body(send, error.status, error.body(), request_id)
        except asyncio.CancelledError:
            if task is not None and row is not None and self.open.revoked(task):
                task.uncancel()
                await revoked(row, send)
                return
            current = asyncio.current_task()
            if watch is None or not watch.gone or current is None:
                raise
            current.uncancel()
            if row is not None:
                row.error = "client disconnected"
        finally:
            if task is not None and key_text is not None:
                self.open.leave(key_text, task)
            if watch is not None:
                watch.close()
            if row is not None:
                self.finish(row, started)

    def _revoke_open(self) -> None:
        if cancelled := self.open.revoke(self.keys.usable()):
            log.info("requests of revoked keys ended", extra={"fields": {"count": cancelled}})

    async def route(
        self,
        scope: dict[str, Any],
        body: bytes,
        content_type: str,
        policy: Policy,
        row: RequestRow,
        send: Send,
        started: float,
    ) -> None:
        catalog, limiter, budgets = self.catalog, self.limiter, self.budgets
        assert catalog is not None and self.client is not None and limiter is not None
        assert budgets is not None
        path, method = scope["path"], scope["method"]
        if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
            await self.answer_models(path, policy, row, send)
            return
        parsed = RequestBody(body)  # parsed once, for the model, the user and the usage
        model = routing.request_model(content_type, parsed)
        row.model, row.end_user = model, attribution.end_user(content_type, parsed)
        policy.check_model(model)
        deployments = aliases.resolve(catalog, model, content_type, body)  # a public name?
        plan = await self.plan(catalog, model) if deployments is None else []
        row.upstream_model = model
        usage = self.settings.stream_usage
        budgets.admit(policy.key)
        admission = limiter.admit(policy)
        extra = () if admission is None else admission.headers

        async def attempt(plan: list[UpstreamState], body: bytes, send: Send) -> Meter | None:
            sent = parsed if body is parsed.raw else RequestBody(body)  # an alias's is rewritten
            asked = ask_for_usage(path, sent) if usage else None
            assert self.client is not None and catalog is not None
            return await exchange(
                self.client, catalog, plan, scope, body, asked, row, send, started, extra
            )

        meter = None
        try:
            if deployments is None:
                meter = await attempt(plan, body, send)
            else:
                meter = await fallbacks.forward(deployments, attempt, row, send)
        finally:
            if admission is not None or policy.key.budget is not None:
                tokens = tokens_used(row, meter)
                if admission is not None:
                    limiter.release(admission, tokens)
                budgets.charge(policy.key, row, tokens)

    async def plan(self, catalog: Catalog, model: str | None) -> list[UpstreamState]:
        states = catalog.states
        if not states:
            raise errors.no_upstream()
        if model is None or len(states) == 1:
            return routing.rank_any(states)
        serving = catalog.serving(model)
        if not serving:
            await catalog.refresh_soon()
            serving = catalog.serving(model)
            if not serving:
                unknown = catalog.unknown()
                if unknown:  # it may be theirs: not a 404
                    reasons = [f"{u.upstream.label}: {u.refusal or 'unreachable'}" for u in unknown]
                    raise errors.models_unknown(model, reasons)
                raise errors.model_not_found(model)
        return routing.rank(serving, model)

    async def answer_models(self, path: str, policy: Policy, row: RequestRow, send: Send) -> None:
        catalog = self.catalog
        assert catalog is not None
        if not catalog.refreshed:
            await catalog.refresh()
        if path == "/v1/models":
            models = [m for m in catalog.models() if policy.allows(m["id"])]
            document: Any = {"data": models, "object": "list"}
        else:
            model_id = path[len("/v1/models/") :]
            row.model = model_id
            policy.check_model(model_id)
            document = catalog.find(model_id)
            if document is None:
                raise errors.model_not_found(model_id)
        row.status = 200
        row.ttfb_ms = 0.0
        row.bytes_out = await send_json(send, 200, document, row.request_id)

    def finish(self, row: RequestRow, started: float) -> None:
        failed = row.error is not None or not 200 <= row.status < 400
        elapsed_ms = (time.perf_counter() - started) * 1000
        if not failed:
            row.end_ms = row.start_ms + round(elapsed_ms)
        self.recorder.record(row)
        self.metrics.observe(row, elapsed_ms / 1000)
        if self.tracing is not None:
            self.tracing.record(row, started)
        logs.event(
            log,
            "request",
            {
                "id": row.request_id,
                "key": row.key_id,
                "method": row.method,
                "path": row.path,
                "model": row.model,
                "upstream": row.upstream,
                "status": row.status,
                "ttfb_ms": None if row.ttfb_ms is None else round(row.ttfb_ms, 1),
                "ms": round(elapsed_ms, 1),
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "error": row.error,
            },
        )


async def revoked(row: RequestRow, send: Send) -> None:
    """End a request whose key was revoked while it was in flight: a 401 if nothing was sent
    yet, a final error event for a stream, an aborted connection for any other body."""
    error = errors.key_refused(
        "This API key was revoked while its request was in progress", "api_key_revoked"
    )
    row.error = error.code
    if row.ttfb_ms is None:  # set as soon as the answer's start is sent
        row.status = error.status
        await send_body(send, error.status, error.body(), row.request_id, error.headers)
    elif row.stream:  # after a blank line, in case the stream stopped inside an event
        body = b"\n\n" + sse_error(error)
        await send({"type": "http.response.body", "body": body, "more_body": False})
    else:
        raise UpstreamCut(error.code)


def _forget_dead_workers(settings: Settings) -> None:
    """Remove heartbeats that proxy workers gone long ago left behind."""
    for beat in read_heartbeats(settings.run_dir):
        old = time.time() - float(beat.get("updated", 0)) > 10 * STALE_AFTER
        if beat.get("program") == "proxy" and old:
            # Gone already, or a read-only disk: neither may stop the proxy from starting.
            with contextlib.suppress(OSError):
                (settings.run_dir / f"{beat['name']}.json").unlink()


def create_app(settings: Settings | None = None) -> ProxyApp | CORSMiddleware:
    """The app for one uvicorn worker (each worker process calls this), behind CORS when
    CORS_ORIGIN allows browsers to call it."""
    settings = settings or get_settings()
    setup_logging("proxy", settings.log_level)
    app = ProxyApp(settings)
    cors = cors_options(
        settings.cors_origin,
        methods=["*"],
        expose=["x-request-id", "x-llmp-attempts"],
        headers=["Authorization", "Content-Type", "api-key", "x-api-key"],
    )
    return app if cors is None else CORSMiddleware(app, **cors)  # type: ignore[arg-type]
