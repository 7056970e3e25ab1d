"""OpenTelemetry traces of each proxied request, exported over OTLP/HTTP.

Only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set:
otherwise `from_environment` answers None, nothing of OpenTelemetry is imported, and a request
pays one `is None` test. The SDK and its exporter are the optional extra `llmp[otel]`.

A request's trace is written when it ends, from what was measured on the way, so the request
path carries no tracing calls: the gateway span `llmp.request` (from the request's arrival to its
end), and under it `llmp.queue` (the wait in an upstream's fair queue, if any) and one
`llmp.upstream` per upstream tried (from its call to the next attempt or the end), whose
`first_token` event marks when the answer started. The upstream calls are timed by a wrapper
around the upstream client (`TracedClient`), which keeps them in a context variable of the
request's task.

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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from services.proxy.upstream import Answer, Endpoint, UpstreamClient
from shared.analytics import RequestRow

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger("proxy.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# The wall-clock times (ns) at which this request's upstream calls began, in order.
_calls: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "llmp_upstream_calls", default=None
)


class TracedClient:
    """An UpstreamClient that notes when each request to an upstream begins."""

    def __init__(self, inner: UpstreamClient) -> None:
        self.inner = inner

    async def request(
        self,
        endpoint: Endpoint,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Answer:
        calls = _calls.get()
        if calls is None:
            _calls.set(calls := [])
        calls.append(time.time_ns())
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
        return TracedClient(client)

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
        start = end - int((time.perf_counter() - started) * 1e9)
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
        root = self.tracer.start_span(
            "llmp.request", kind=trace.SpanKind.SERVER, start_time=start, attributes=attributes
        )
        if failed:
            root.set_status(trace.StatusCode.ERROR, row.error or f"HTTP {row.status}")
        parent = trace.set_span_in_context(root)
        calls = _calls.get() or []
        if calls and row.queue_ms:
            queued = calls[-1] - int(row.queue_ms * 1e6)
            self.tracer.start_span("llmp.queue", context=parent, start_time=queued).end(calls[-1])
        for number, began in enumerate(calls):
            last = number == len(calls) - 1
            span = self.tracer.start_span(
                "llmp.upstream",
                context=parent,
                kind=trace.SpanKind.CLIENT,
                start_time=began,
                attributes={"llmp.attempt": number + 1},
            )
            if last and row.ttfb_ms is not None:
                span.add_event("first_token", timestamp=start + int(row.ttfb_ms * 1e6))
            if not last:
                span.set_status(trace.StatusCode.ERROR, "connection failed")
            span.end(end if last else calls[number + 1])
        root.end(end)

    def close(self) -> None:
        """Export what is left (bounded by the processor's own timeouts)."""
        self.provider.shutdown()


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
