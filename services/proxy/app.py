"""The proxy's ASGI application: `/v1/*` for API-key holders.

Per request: check the key and its policy, read the body (at most PAYLOAD_LIMIT), answer
`/v1/models` from the catalog (the models the key may use) or check the model and the key's
limits, pick upstreams and hand over to `forward.exchange`, then queue one analytics row and log
one line. A client that goes away cancels the work at once, upstream request included.

What a request needs and what it found travel in its `Flow` (services/proxy/flow.py); the
worker's long-lived resources are in its `Runtime` (services/proxy/runtime.py), built by the
lifespan.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import secrets
import time
from typing import Any

from starlette.middleware.cors import CORSMiddleware

from services.proxy import aliases, attribution, errors, fallbacks, routing
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
from services.proxy.body import RequestBody
from services.proxy.catalog import UpstreamState
from services.proxy.errors import ProxyError
from services.proxy.flow import Flow
from services.proxy.forward import UpstreamCut, exchange
from services.proxy.runtime import Runtime
from shared import logs
from shared.analytics import RequestRow
from shared.cors import cors_options
from shared.logs import setup_logging
from shared.settings import Settings, get_settings

log = logging.getLogger("proxy")


class ProxyApp:
    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime  # built by the lifespan, unless given (tests drive it in-process)
        # Request ids: a random prefix per process and a counter (no system call per request).
        self._id_prefix = secrets.token_hex(5)
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        await receive()
        try:
            self.runtime = await Runtime.start(self.settings)
        except Exception as exc:
            log.exception("start-up failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        # Everything allocated so far lives as long as the worker: keep it out of the cyclic
        # collector's way, so that its full collections stay short.
        gc.freeze()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await self.runtime.close()
        await send({"type": "lifespan.shutdown.complete"})

    # Requests ----------------------------------------------------------------------------

    async def handle(self, scope: dict[str, Any], receive: Receive, asgi_send: Send) -> None:
        """One request, inside the last-resort error boundary: an exception nothing else
        handled is logged with its traceback and becomes an OpenAI-shaped 500 if the answer
        has not started, or the end of the connection if it has (uvicorn closes it: the client
        sees the truncation); either way its analytics row says so."""
        started = time.perf_counter()
        rt = self.runtime
        if rt is None:
            raise RuntimeError("the proxy has not started: its lifespan has not run")
        if rt.tracing is not None:  # the client's trace context, if it sent one
            rt.tracing.begin(scope["headers"], started)
        send = Response(asgi_send)
        request_id = f"{self._id_prefix}{next(self._ids):06x}"
        path: str = scope["path"]
        limit = self.settings.payload_limit
        row: RequestRow | None = None
        watch: DisconnectWatch | None = None
        flow: Flow | None = None
        task = key_text = None
        unread = True  # the body: drained before a refusal is answered (see discard_body)
        try:
            if not routing.inside_v1(path):
                raise errors.not_found(path)
            key_text, content_type, declared = request_headers(scope["headers"])
            if key_text is None:
                raise errors.missing_key()
            policy = rt.keys.lookup(key_text)
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
            task = rt.open.enter(key_text)
            unread = False
            body = await read_body(receive, limit, declared)
            row.bytes_in = len(body)
            watch = DisconnectWatch(receive)
            flow = Flow(scope, policy, RequestBody(body), content_type, row, send, started)
            await self.route(flow)
        except ProxyError as exc:
            if row is not None:
                row.status, row.error = exc.status, exc.code
            else:  # refused before a key was known: no analytics row, but counted
                rt.metrics.refused(exc.status)
            if not send.started:
                if unread:
                    await discard_body(receive, limit)
                await send_body(send, exc.status, exc.body(), request_id, exc.headers)
        except ClientGone:
            assert row is not None
            row.error = "client disconnected"
        except UpstreamCut:
            pass  # the answer stops short: uvicorn closes the connection, the client sees it
        except Exception as exc:
            log.exception("request failed", extra={"fields": {"id": request_id}})
            if row is not None:
                after = " after the answer started" if send.started else ""
                row.error = f"internal error{after}: {type(exc).__name__}"
                if not send.started:
                    row.status = 500
            else:
                rt.metrics.refused(500)
            if not send.started:
                if unread:
                    await discard_body(receive, limit)
                error = errors.internal_error()
                await send_body(send, error.status, error.body(), request_id)
        except asyncio.CancelledError:
            if task is not None and row is not None and rt.open.revoked(task):
                task.uncancel()
                await revoked(row, send)
                return
            current = asyncio.current_task()
            if watch is None or not watch.gone or current is None:
                raise
            current.uncancel()
            if row is not None and not (flow is not None and flow.delivered):
                row.error = "client disconnected"
        finally:
            if task is not None and key_text is not None:
                rt.open.leave(key_text, task)
            if watch is not None:
                watch.close()
            if row is not None:
                finish(rt, row, started)

    async def route(self, flow: Flow) -> None:
        """Answer `/v1/models` from the catalog, or check the model and the key's limits and
        send the request upstream: to the upstreams that serve the model, or to an alias's
        deployments in turn (services/proxy/fallbacks.py). The key is charged what the
        request used, whatever happened."""
        rt = self.runtime
        assert rt is not None
        path, policy, row = flow.path, flow.policy, flow.row
        if flow.method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
            await self.answer_models(flow)
            return
        model = routing.request_model(flow.content_type, flow.body)
        row.model, row.end_user = model, attribution.end_user(flow.content_type, flow.body)
        policy.check_model(model)
        deployments = aliases.resolve(rt.catalog, model, flow.content_type, flow.body.raw)
        plan = await self.plan(model) if deployments is None else []
        row.upstream_model = model
        await rt.budgets.admit(policy.key)
        flow.admission = await rt.limiter.admit(policy)

        try:
            if deployments is None:
                await exchange(rt, flow, plan, flow.body.raw, flow.send)
            else:
                attempt = functools.partial(exchange, rt, flow)  # fallbacks.Run
                await fallbacks.forward(deployments, attempt, row, flow.send)
        finally:
            if flow.admission is not None or policy.key.budget is not None:
                tokens = flow.tokens_used()
                if flow.admission is not None:
                    rt.limiter.release(flow.admission, tokens)
                rt.budgets.charge(policy.key, row, tokens)

    async def plan(self, model: str | None) -> list[UpstreamState]:
        """The upstreams to try for `model`, best first."""
        assert self.runtime is not None
        catalog = self.runtime.catalog
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

    async def answer_models(self, flow: Flow) -> None:
        assert self.runtime is not None
        catalog, path, row = self.runtime.catalog, flow.path, flow.row
        if not catalog.refreshed:
            await catalog.refresh()
        if path == "/v1/models":
            models = [m for m in catalog.models() if flow.policy.allows(m["id"])]
            document: Any = {"data": models, "object": "list"}
        else:
            model_id = path[len("/v1/models/") :]
            row.model = model_id
            flow.policy.check_model(model_id)
            document = catalog.find(model_id)
            if document is None:
                raise errors.model_not_found(model_id)
        row.status = 200
        row.ttfb_ms = 0.0
        row.bytes_out = await send_json(flow.send, 200, document, row.request_id)


def finish(rt: Runtime, row: RequestRow, started: float) -> None:
    """Record the request's row, its metrics and its trace, and log its one line."""
    failed = row.error is not None or not 200 <= row.status < 400
    elapsed_ms = (time.perf_counter() - started) * 1000
    if not failed:
        row.end_ms = row.start_ms + round(elapsed_ms)
    rt.recorder.record(row)
    rt.metrics.observe(row, elapsed_ms / 1000)
    if rt.tracing is not None:
        rt.tracing.record(row, started)
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
