"""OpenTelemetry traces through a real proxy, the openai SDK as the client and a local OTLP/HTTP
receiver whose requests are decoded with opentelemetry-proto: the spans' names, parents, times
and attributes, and no prompt text anywhere; without an endpoint nothing is loaded."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from services.proxy.tracing import _address
from tests.conftest import eventually
from tests.webhook_receiver import Receiver

PROMPT = "the secret prompt text"


@pytest.fixture
def collector(monkeypatch):
    with Receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.removesuffix("/hook"))
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "llmp-test")
        yield receiver


def spans(receiver: Receiver) -> list[tuple[dict[str, Any], Span]]:
    """Every span received, with its resource's attributes."""
    found: list[tuple[dict[str, Any], Span]] = []
    for received in list(receiver.received):
        export = ExportTraceServiceRequest()
        export.ParseFromString(received.body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                found.extend((resource, span) for span in scope.spans)
    return found


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        out[attribute.key] = getattr(value, value.WhichOneof("value"))
    return out


def test_each_request_is_traced_gateway_queue_upstream_first_token(
    collector, upstreams, proxy, api_key
):
    a = upstreams("a", ["m"], pace=0.05, chunks=100)  # 5 s: the second waits meanwhile
    running = proxy(f"{a.url}|concurrency=1")
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)

    def ask() -> None:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": PROMPT}], stream=True, user="u-1"
        )
        assert len(list(stream)) >= 100

    second = threading.Thread(target=ask)
    first = threading.Thread(target=ask)
    first.start()
    eventually(lambda: a.active == 1)
    second.start()
    gate = running.runtime.catalog.states[0].gate
    assert gate is not None
    eventually(lambda: gate.queued == 1)  # the second waits in the upstream's queue
    first.join(30)
    second.join(30)
    assert eventually(
        lambda: len([s for _, s in spans(collector) if s.name == "llmp.request"]) == 2
    )
    running.runtime.tracing.close()
    got = spans(collector)
    assert {resource["service.name"] for resource, _ in got} == {"llmp-test"}
    by_trace: dict[bytes, dict[str, list[Span]]] = {}
    for _, span in got:
        by_trace.setdefault(span.trace_id, {}).setdefault(span.name, []).append(span)
    assert len(by_trace) == 2
    queued = 0
    for names in by_trace.values():
        [root] = names["llmp.request"]
        [upstream] = names["llmp.upstream"]
        assert root.parent_span_id == b"" and root.kind == Span.SPAN_KIND_SERVER
        assert upstream.parent_span_id == root.span_id and upstream.kind == Span.SPAN_KIND_CLIENT
        assert root.start_time_unix_nano <= upstream.start_time_unix_nano
        assert upstream.end_time_unix_nano <= root.end_time_unix_nano
        [first_token] = upstream.events
        assert first_token.name == "first_token"
        assert (
            upstream.start_time_unix_nano <= first_token.time_unix_nano <= root.end_time_unix_nano
        )
        found = attributes(root)
        assert found["http.request.method"] == "POST"
        assert found["url.path"] == "/v1/chat/completions"
        assert found["http.response.status_code"] == 200
        assert found["gen_ai.request.model"] == "m"
        assert found["llmp.key_id"] == api_key.id and found["llmp.stream"] is True
        assert found["llmp.upstream"] == a.url + "/v1"
        assert found["gen_ai.usage.output_tokens"] == 100
        assert "error.type" not in found
        for span in names.get("llmp.queue", []):
            queued += 1
            assert span.parent_span_id == root.span_id
            assert span.end_time_unix_nano == upstream.start_time_unix_nano
            assert span.start_time_unix_nano >= root.start_time_unix_nano
    assert queued == 1  # the second request waited for the first
    for received in collector.received:
        assert PROMPT.encode() not in received.body and api_key.key.encode() not in received.body
        assert b"u-1" not in received.body  # nor the end user the request named


def test_a_refused_request_is_an_error_span(collector, upstreams, proxy, api_key):
    a = upstreams("a", ["m"])
    running = proxy(a, "http://127.0.0.1:9")  # the second refuses connections
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="nowhere", messages=[])
    eventually(lambda: any(s.name == "llmp.request" for _, s in spans(collector)))
    running.runtime.tracing.close()
    [root] = [s for _, s in spans(collector) if s.name == "llmp.request"]
    assert root.status.code == root.status.STATUS_CODE_ERROR
    found = attributes(root)
    assert found["error.type"] == refused.value.body["code"]
    assert found["http.response.status_code"] == refused.value.status_code == 502
    assert not [s for _, s in spans(collector) if s.name == "llmp.upstream"]  # none was asked


def test_an_upstreams_address_is_named_without_its_credentials():
    assert _address("https://user:pass@gpu.lan:8443/v1") == "https://gpu.lan:8443/v1"
    assert _address("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert _address(None) is None


def test_a_failure_to_trace_never_fails_the_request(collector, upstreams, proxy, api_key, caplog):
    running = proxy(upstreams("a", ["m"]))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter gone")

    running.runtime.tracing.tracer.start_span = broken
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    assert client.chat.completions.create(model="m", messages=[]).choices
    assert eventually(lambda: "trace not recorded" in caplog.text)


# The client's trace context, with the SDK's in-memory exporter ------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


@pytest.fixture
def memory(monkeypatch):
    """Spans kept in memory: the proxies started after this trace into it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.proxy import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "from_environment", lambda: tracing.Tracing(provider))
    return exporter


def finished(exporter, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def sent_upstream(upstream) -> dict[str, str]:
    """The headers of the last completion the upstream got, names in lowercase."""
    seen = [s for s in upstream.seen if s.path.endswith("/chat/completions")][-1]
    return {name.lower(): value for name, value in seen.headers.items()}


def ask(running, api_key, **headers: str) -> None:
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key.key, max_retries=0)
    assert client.chat.completions.create(model="m", messages=[], extra_headers=headers).choices


def test_the_clients_trace_context_is_the_parent_and_goes_on_to_the_upstream(
    memory, upstreams, proxy, api_key
):
    a = upstreams("a", ["m"])
    running = proxy(a)
    ask(running, api_key, traceparent=f"00-{TRACE}-{CLIENT_SPAN}-01", tracestate=STATE)
    [root] = eventually(lambda: finished(memory, "llmp.request"))
    [upstream] = finished(memory, "llmp.upstream")
    assert root.context.trace_id == upstream.context.trace_id == int(TRACE, 16)
    assert root.parent.span_id == int(CLIENT_SPAN, 16) and root.parent.is_remote
    assert upstream.parent.span_id == root.context.span_id
    headers = sent_upstream(a)
    # The upstream's parent is the gateway's span that called it; the tracestate goes on.
    assert headers["traceparent"] == f"00-{TRACE}-{upstream.context.span_id:016x}-01"
    assert headers["tracestate"] == STATE


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{TRACE.upper()}-{CLIENT_SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{CLIENT_SPAN}-01",
        f"00-{TRACE}-{CLIENT_SPAN}-01-more",
    ],
)
def test_a_malformed_traceparent_is_ignored(memory, upstreams, proxy, api_key, traceparent):
    a = upstreams("a", ["m"])
    running = proxy(a)
    ask(running, api_key, traceparent=traceparent, tracestate=STATE)
    [root] = eventually(lambda: finished(memory, "llmp.request"))
    [upstream] = finished(memory, "llmp.upstream")
    assert root.parent is None and root.context.trace_id != int(TRACE, 16)  # a trace of its own
    headers = sent_upstream(a)  # the gateway's, never the client's malformed one
    context = upstream.context
    flags = int(context.trace_flags)  # sampled, and the SDK's trace ids are random (W3C level 2)
    assert flags & 1
    assert (
        headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    )
    assert context.trace_id == root.context.trace_id
    assert "tracestate" not in headers  # it came with a traceparent that did not parse


def test_a_trace_the_client_does_not_sample_is_not_recorded_and_says_so(
    memory, upstreams, proxy, api_key
):
    a = upstreams("a", ["m"])
    running = proxy(a)
    ask(running, api_key, traceparent=f"00-{TRACE}-{CLIENT_SPAN}-00")
    ask(running, api_key)  # a request after it, recorded: the first had its turn
    [root] = eventually(lambda: finished(memory, "llmp.request"))
    assert root.context.trace_id != int(TRACE, 16)
    version, trace_id, span_id, flags = sent_upstream(a)["traceparent"].split("-")
    assert int(flags, 16) & 1 and trace_id == f"{root.context.trace_id:032x}"
    first = next(s for s in a.seen if s.path.endswith("/chat/completions"))
    headers = {name.lower(): value for name, value in first.headers.items()}
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "00")
    assert span_id != CLIENT_SPAN  # the gateway's own span, unrecorded
