"""One exchange with an upstream: build its request, send it, relay the answer.

- The body goes out byte for byte; the query string is kept; hop-by-hop headers are stripped
  both ways; the client's key (and cookies) never reach an upstream, which gets its own
  credentials (`UpstreamState.auth`).
- The answer is relayed raw as it arrives (no decompression, no buffering), so compressed
  bodies pass intact and SSE chunks keep their timing. A body we change (usage stripped from a
  stream) loses its Content-Length and goes out chunked; a 304 goes out without one; the
  upstream's own `x-request-id` is kept as `x-upstream-request-id` beside ours.
- The upstream client's failures become ProxyErrors here and nowhere else, each logged once
  with the upstream's URL; answers name the upstream only by its label ("upstream 2"). A
  connection not made (nothing sent) fails over to the next candidate; nothing is sent again
  here (the client resends only what the upstream cannot have run); a connection closed
  without an answer, a malformed answer and a refused certificate are 502s saying so, a read
  timeout a 504, every connection in use a 503. After the answer has started, a failure ends
  an SSE stream with an error event, and aborts any other body (so the client sees the
  truncation instead of a short, clean-looking body).
- An upstream with a concurrency cap is entered through its fair queue (`Gate`); the time spent
  waiting is recorded. One at its own request or token limit is passed over for the next
  candidate, before anything is sent (`Catalog.turn`, services/proxy/upstream_limits.py).
- A streamed completion may go out with usage asked for (`asked`, from `ask_for_usage`); the
  answer is then stripped back to what the client asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from services.proxy import errors
from services.proxy.asgi import Send, sse_error
from services.proxy.body import RequestBody
from services.proxy.catalog import UpstreamState
from services.proxy.errors import ProxyError
from services.proxy.flow import Flow
from services.proxy.runtime import Runtime
from services.proxy.upstream import (
    Answer,
    BadAnswer,
    Busy,
    CertificateRefused,
    ConnectFailed,
    Dropped,
    ReadTimeout,
    UpstreamError,
)
from services.proxy.upstream_answer import passed_to_client, refused_credentials
from services.proxy.upstream_limits import AtLimit, sooner
from services.proxy.usage import SseMeter, UsageStripper, ask_for_usage, meter_for
from shared.analytics import RequestRow

log = logging.getLogger("proxy.upstream")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"authorization",
    b"api-key",
    b"x-api-key",
    b"cookie",
    b"expect",  # the whole body goes out at once
    b"x-llmp-forwarded",  # nginx's word to the api (shared/forwarding.py), not an upstream's
}


class UpstreamCut(Exception):
    """The upstream failed after the answer had started."""


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def upstream_headers(
    headers: Sequence[tuple[bytes, bytes]], auth: Sequence[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    drop = NOT_FORWARDED | _connection_tokens(headers)
    out = [(n, v) for n, v in headers if n not in drop]
    out.extend(auth)
    return out


# Answers that have no body, whatever their Content-Length says (it describes another answer's).
NO_BODY = frozenset({204, 304})
# The last event of an OpenAI stream, as it ends the piece that carries it (an SSE line ends
# with LF or CRLF; the space after the colon is optional).
DONE = tuple(
    b"data:" + space + b"[DONE]" + end * 2 for space in (b" ", b"") for end in (b"\n", b"\r\n")
)


def client_headers(
    raw: Sequence[tuple[bytes, bytes]],
    request_id: bytes,
    extra: Sequence[tuple[bytes, bytes]],
    status: int = 200,
    transformed: bool = False,
) -> list[tuple[bytes, bytes]]:
    """The upstream's headers for the client, with ours (`extra`, e.g. the key's
    `x-ratelimit-*`) in place of any of the same name. Without Content-Length when the body
    is `transformed` (it would be wrong) or cannot have one (204, 304)."""
    drop = HOP_BY_HOP | _connection_tokens(raw)
    if extra:
        drop |= {n for n, _ in extra}
    if transformed or status in NO_BODY:
        drop |= {b"content-length"}
    out = [(n, v) for n, v in passed_to_client(raw) if n not in drop]
    out.append((b"x-request-id", request_id))
    out.extend(extra)
    return out


async def exchange(
    runtime: Runtime, flow: Flow, plan: Sequence[UpstreamState], body: bytes, send: Send
) -> None:
    """Send `body` (the request's, or an alias's rewrite of it) to the first candidate of
    `plan` that accepts a connection, and relay its answer to `send`."""
    scope, row, catalog = flow.scope, flow.row, runtime.catalog
    asked = None
    if runtime.settings.stream_usage:
        asked = ask_for_usage(flow.path, flow.body if body is flow.body.raw else RequestBody(body))
    # The raw path and query, as the client sent them: no decoding, no re-quoting.
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope["query_string"]
    suffix = raw[3:] + (b"?" + query if query else b"")
    last_error: ProxyError | None = None
    for state in plan:
        upstream = state.upstream
        try:
            turn = await catalog.turn(state, row)
        except AtLimit as exc:  # not sent: the next candidate may take it
            last_error = sooner(last_error, exc)
            continue
        row.upstream = upstream.url
        async with turn:
            sent = time.perf_counter()
            try:
                answer = await runtime.client.request(
                    state.endpoint,
                    scope["method"],
                    upstream.path.encode() + suffix,
                    upstream_headers(scope["headers"], state.auth),
                    asked or body,
                )
            except ConnectFailed as exc:
                # Nothing was sent: the next candidate may take the request.
                catalog.failed(state, exc)
                refused = isinstance(exc, CertificateRefused)
                maker = errors.certificate_refused if refused else errors.bad_gateway
                last_error = maker(upstream.label)
                continue
            except UpstreamError as exc:
                catalog.failed(state, exc)
                raise failure(exc, state, row) from exc
            catalog.answered(state, answer.status)
            if answer.status == 401:  # its refusal of our key, never of the client's
                answer.close()
                raise refused_credentials(upstream.label, bool(upstream.key))
            answer = catalog.latencies.timed(upstream.id, row.upstream_model, answer, sent)
            await relay(flow, answer, send, asked is not None)
            return
    assert last_error is not None
    raise last_error


def failure(exc: UpstreamError, state: UpstreamState, row: RequestRow) -> ProxyError:
    """The answer to the client for a failure before the answer started, logged once (with
    the URL the answer leaves out)."""
    label = state.upstream.label
    if isinstance(exc, ReadTimeout):
        error = errors.gateway_timeout(label)
    elif isinstance(exc, Busy):
        error = errors.upstream_busy(label)
    elif isinstance(exc, Dropped):
        error = errors.upstream_dropped(label)
    elif isinstance(exc, BadAnswer):
        error = errors.bad_answer(label, str(exc))
    else:
        error = errors.bad_gateway(label)
    log.warning(
        "upstream failed",
        extra={
            "fields": {
                "id": row.request_id,
                "upstream": state.upstream.url,
                "error": f"{type(exc).__name__}: {exc}",
            }
        },
    )
    return error


async def relay(flow: Flow, answer: Answer, send: Send, asked: bool) -> None:
    """Relay the answer to `send` as it arrives; the row records it, `flow.meter` its usage."""
    row = flow.row
    complete = False
    content_type = answer.header(b"content-type").decode("latin-1")
    encoding = answer.header(b"content-encoding").decode("latin-1")
    meter = flow.meter = meter_for(content_type, encoding)
    try:
        row.status = answer.status
        row.stream = content_type.startswith("text/event-stream")
        stripper = UsageStripper() if asked and isinstance(meter, SseMeter) else None
        headers = client_headers(
            answer.headers,
            row.request_id.encode(),
            flow.limit_headers,
            answer.status,
            stripper is not None,
        )
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        row.ttfb_ms = (time.perf_counter() - flow.started) * 1000
        # The last two pieces relayed, kept (not copied) for a cut: does it fall between events?
        before = latest = b""
        try:
            async for chunk in answer.chunks():
                if meter is not None:
                    meter.feed(chunk)
                if stripper is not None:
                    chunk = stripper.feed(chunk)
                    if not chunk:
                        continue
                row.bytes_out += len(chunk)
                before, latest = latest, chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if chunk.endswith(DONE):
                    flow.delivered = True
            if stripper is not None and (tail := stripper.flush()):
                row.bytes_out += len(tail)
                await send({"type": "http.response.body", "body": tail, "more_body": True})
        except UpstreamError as exc:
            row.error = f"upstream cut: {exc}"
            if not row.stream:
                raise UpstreamCut(row.error) from exc
            cut = errors.upstream_cut()
            held = stripper.flush() if stripper is not None else b""  # the upstream's own
            last = (before + latest + held)[-2:]
            # A line cut short is ended first, so that the error is an event of its own.
            event = held + (sse_error(cut) if last in (b"", b"\n\n") else b"\n\n" + sse_error(cut))
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        complete = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        if meter is not None:
            row.prompt_tokens, row.completion_tokens = meter.usage()
            if not complete and isinstance(meter, SseMeter) and row.completion_tokens is None:
                row.completion_tokens, row.usage_estimated = meter.pieces, True
        if complete:
            answer.release()
        else:
            answer.close()
