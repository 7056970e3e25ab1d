"""OpenTelemetry traces of each proxied request, exported over OTLP/HTTP.

Only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set:
otherwise `from_environment` answers None, nothing of OpenTelemetry is imported, and a request
pays one `is None` test. The SDK and its exporter are the optional extra `llmp[otel]`.

A request's trace is mostly written when it ends, from what was measured on the way: the
gateway span `llmp.request` (from the request's arrival to its end), and under it `llmp.queue`
(the wait in an upstream's fair queue, if any) and one `llmp.upstream` per upstream tried (from
its call to the next attempt or the end), whose `first_token` event marks when the answer
started. The request path makes one call (`begin`, at its arrival) and the wrapper around the
upstream client (`TracedClient`) the rest, keeping what it started in a context variable of the
request's task: at the first upstream call it starts the gateway span, and at each call the
`llmp.upstream` span, so that the upstream gets a W3C `traceparent` naming that span as its
parent (and the client's `tracestate`, passed on), in place of what the client sent.

A client's own `traceparent` (and `tracestate`), parsed by the spec's grammar
(services/proxy/trace_context.py), makes the gateway span its child, in its trace, sampled as
the client says (the SDK's default sampler follows the parent); one that does not parse is
ignored, and the gateway span starts a trace of its own.

Attributes name the request (id, method, path, status, model, stream), its key (id), the
upstream (its address without credentials) and the tokens counted; never a secret, a prompt or
an answer. The SDK's batch processor exports from a thread of its own, and the standard
`OTEL_*` variables (service name, headers, timeouts, batch sizes) apply.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from services.proxy import trace_context
from services.proxy.upstream import Answer, Endpoint, UpstreamClient
from shared.analytics import RequestRow

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("proxy.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROPAGATED = (b"traceparent", b"tracestate")  # the client's, replaced by the gateway's


@dataclass(slots=True)
class _Trace:
    """One request's trace, as far as it has been started."""

    parent: Context | None  # the client's span, or None: a trace of its own
    start: int  # the request's arrival, wall-clock ns
    root: Span | None = None  # `llmp.request`, started at the first upstream call
    calls: list[tuple[int, Span]] = field(default_factory=list)  # (start ns, `llmp.upstream`)


_current: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar("llmp_trace", default=None)


class TracedClient:
    """An UpstreamClient that starts an `llmp.upstream` span for each request to an upstream,
    and tells the upstream so in its `traceparent`."""

    def __init__(self, inner: UpstreamClient, tracing: Tracing) -> None:
        self.inner = inner
        self.tracing = tracing

    async def request(
        self,
        endpoint: Endpoint,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Answer:
        propagated = self.tracing.upstream_call()
        if propagated is not None:
            headers = [(n, v) for n, v in headers if n not in PROPAGATED] + propagated
        return await self.inner.request(endpoint, method, target, headers, body)

    async def fetch(
        self,
        endpoint: Endpoint,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        seconds: float,
    ) -> tuple[int, bytes]:
        return await self.inner.fetch(endpoint, target, headers, seconds)

    async def close(self) -> None:
        await self.inner.close()


def _address(url: str | None) -> str | None:
    """An upstream's URL without user or password."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("llmp.proxy")
        self._trace = trace

    def wrap(self, client: UpstreamClient) -> UpstreamClient:
        return TracedClient(client, self)

    def begin(self, headers: Sequence[tuple[bytes, bytes]], started: float) -> None:
        """A request has arrived (`started`: its perf_counter start): take its client's trace
        context, if it sent a valid one. Tracing never fails a request: a failure here is
        logged, and the trace starts without it."""
        try:
            self._begin(headers, started)
        except Exception:
            log.exception("client trace context not taken")
            _current.set(_Trace(None, _wall_ns(started)))

    def _begin(self, headers: Sequence[tuple[bytes, bytes]], started: float) -> None:
        parent = None
        client = trace_context.from_headers(headers)
        if client is not None:
            from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

            remote = SpanContext(
                client.trace_id,
                client.span_id,
                is_remote=True,
                trace_flags=TraceFlags(client.flags & TraceFlags.SAMPLED),
                trace_state=TraceState(list(client.state)),
            )
            parent = self._trace.set_span_in_context(NonRecordingSpan(remote))
        _current.set(_Trace(parent, _wall_ns(started)))

    def _request(self) -> _Trace:
        found = _current.get()
        if found is None:  # a request `begin` did not see: its trace starts now
            _current.set(found := _Trace(None, time.time_ns()))
        return found

    def _root(self, request: _Trace) -> Span:
        if request.root is None:
            request.root = self.tracer.start_span(
                "llmp.request",
                context=request.parent,
                kind=self._trace.SpanKind.SERVER,
                start_time=request.start,
            )
        return request.root

    def upstream_call(self) -> list[tuple[bytes, bytes]] | None:
        """A request to an upstream begins: its span, and the headers that name it (None if
        tracing failed: logged, and the request goes on untraced)."""
        try:
            return self._upstream_call()
        except Exception:
            log.exception("upstream call not traced")
            return None

    def _upstream_call(self) -> list[tuple[bytes, bytes]]:
        request = self._request()
        began = time.time_ns()
        span = self.tracer.start_span(
            "llmp.upstream",
            context=self._trace.set_span_in_context(self._root(request)),
            kind=self._trace.SpanKind.CLIENT,
            start_time=began,
            attributes={"llmp.attempt": len(request.calls) + 1},
        )
        request.calls.append((began, span))
        context = span.get_span_context()
        out = [
            (
                b"traceparent",
                trace_context.header(context.trace_id, context.span_id, context.trace_flags),
            )
        ]
        if context.trace_state:
            out.append((b"tracestate", context.trace_state.to_header().encode()))
        return out

    def record(self, row: RequestRow, started: float) -> None:
        """The request's spans, now that it has ended (`started`: its perf_counter start).
        Tracing never fails a request: a failure here is logged and the trace is lost."""
        try:
            self._record(row, started)
        except Exception:
            log.exception("trace not recorded", extra={"fields": {"id": row.request_id}})

    def _record(self, row: RequestRow, started: float) -> None:
        trace = self._trace
        end = time.time_ns()
        request = self._request()
        start = request.start
        failed = row.error is not None or not 200 <= row.status < 400
        attributes: dict[str, Any] = {
            "http.request.method": row.method,
            "url.path": row.path,
            "http.response.status_code": row.status,
            "llmp.request_id": row.request_id,
            "llmp.key_id": row.key_id,
            "llmp.stream": row.stream,
            "llmp.bytes_in": row.bytes_in,
            "llmp.bytes_out": row.bytes_out,
        }
        for name, value in (
            ("gen_ai.request.model", row.model),
            ("llmp.upstream", _address(row.upstream)),
            ("gen_ai.usage.input_tokens", row.prompt_tokens),
            ("gen_ai.usage.output_tokens", row.completion_tokens),
            ("error.type", row.error if failed else None),
        ):
            if value is not None:
                attributes[name] = value
        root = self._root(request)
        root.set_attributes(attributes)
        if failed:
            root.set_status(trace.StatusCode.ERROR, row.error or f"HTTP {row.status}")
        parent = trace.set_span_in_context(root)
        calls = request.calls
        if calls and row.queue_ms:
            last_call = calls[-1][0]
            queued = last_call - int(row.queue_ms * 1e6)
            self.tracer.start_span("llmp.queue", context=parent, start_time=queued).end(last_call)
        for number, (_, span) in enumerate(calls):
            last = number == len(calls) - 1
            if last and row.ttfb_ms is not None:
                span.add_event("first_token", timestamp=start + int(row.ttfb_ms * 1e6))
            if not last:
                span.set_status(trace.StatusCode.ERROR, "connection failed")
            span.end(end if last else calls[number + 1][0])
        root.end(end)

    def close(self) -> None:
        """Export what is left (bounded by the processor's own timeouts)."""
        self.provider.shutdown()


def _wall_ns(started: float) -> int:
    """The wall-clock time (ns) of a perf_counter reading."""
    return time.time_ns() - int((time.perf_counter() - started) * 1e9)


def from_environment(environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """Tracing as the standard OTEL_* variables configure it; None (and nothing imported)
    without an OTLP endpoint."""
    if not any(environ.get(name) for name in ENDPOINT_VARIABLES):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'llmp[otel]' (the container image has it)"
        ) from exc

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "llmp"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)
