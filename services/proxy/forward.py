"""One exchange with an upstream: build its request, send it, relay the answer.

- The body goes out byte for byte; the query string is kept; hop-by-hop headers are stripped
  both ways; the client's key (and cookies) never reach an upstream, which gets its own key.
- The answer is relayed raw as it arrives (no decompression, no buffering), so compressed
  bodies pass intact and SSE chunks keep their timing.
- Foreign exceptions become ProxyErrors here and nowhere else: a connection refused or not made
  in UPSTREAM_CONNECT_TIMEOUT fails over to the next candidate, a connection closed with no
  answer at all is sent again once (it was a kept-alive one the upstream had just dropped), a
  read timeout is a 504, anything else before the answer a 502. After the
  answer has started, a failure ends an SSE stream with an error event, and aborts any other
  body (so the client sees the truncation instead of a short, clean-looking body).
- An upstream with a concurrency cap is entered through its fair queue (`Gate`); the time spent
  waiting is recorded.
- A streamed completion may go out with usage asked for (`asked`, from `ask_for_usage`); the
  answer is then stripped back to what the client asked for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from services.proxy.catalog import Catalog, UpstreamState
from services.proxy.errors import ProxyError, bad_gateway, gateway_timeout
from services.proxy.pool import Answer, ConnectFailed, Dropped, Pool, ReadTimeout, UpstreamError
from services.proxy.usage import Meter, SseMeter, UsageStripper, meter_for
from shared.analytics import RequestRow

Send = Callable[[dict[str, Any]], Awaitable[None]]

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


def upstream_headers(headers: Sequence[tuple[bytes, bytes]], key: str) -> list[tuple[bytes, bytes]]:
    drop = NOT_FORWARDED | _connection_tokens(headers)
    out = [(n, v) for n, v in headers if n not in drop]
    if key:
        out.append((b"authorization", b"Bearer " + key.encode("latin-1")))
    return out


def client_headers(
    raw: Sequence[tuple[bytes, bytes]], request_id: bytes, extra: Sequence[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The upstream's headers for the client, with ours (`extra`, e.g. the key's
    `x-ratelimit-*`) in place of any of the same name."""
    drop = HOP_BY_HOP | _connection_tokens(raw)
    if extra:
        drop |= {n for n, _ in extra}
    out = [(n, v) for n, v in raw if n not in drop]
    out.append((b"x-request-id", request_id))
    out.extend(extra)
    return out


def sse_error(error: ProxyError) -> bytes:
    return b"data: " + error.body() + b"\n\n"


async def exchange(
    pool: Pool,
    catalog: Catalog,
    plan: Sequence[UpstreamState],
    scope: dict[str, Any],
    body: bytes,
    asked: bytes | None,
    row: RequestRow,
    send: Send,
    started: float,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> Meter | None:
    """Send the request to the first candidate that accepts a connection, relay its answer;
    returns the meter that read its usage."""
    # The raw path and query, as the client sent them: no decoding, no re-quoting.
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope["query_string"]
    suffix = raw[3:] + (b"?" + query if query else b"")
    last_error: ProxyError | None = None
    candidates, resent = list(plan), False
    for state in candidates:
        upstream = state.upstream
        row.upstream = upstream.url
        gate = state.gate
        if gate is not None:
            state.in_flight += 1  # counted while queued, so that routing spreads the queues
            try:
                waited = await gate.enter(row.key_id)
            finally:
                state.in_flight -= 1
            row.queue_ms = (row.queue_ms or 0.0) + waited * 1000
        state.in_flight += 1
        try:
            try:
                answer = await pool.request(
                    pool.origin(upstream.origin),
                    scope["method"],
                    upstream.path.encode() + suffix,
                    upstream_headers(scope["headers"], upstream.key),
                    asked or body,
                )
            except ConnectFailed as exc:
                # Nothing was sent: the next candidate may take the request.
                catalog.mark_down(state, f"connect: {exc}")
                last_error = bad_gateway(upstream.url)
                continue
            except Dropped as exc:
                # Closed with no answer at all: a kept-alive connection the upstream dropped as
                # the request went out (a restart, its idle timeout). Sent again once, on a new
                # connection: to the next candidate, or to this one if it is the last.
                if resent:
                    raise bad_gateway(upstream.url) from exc
                resent, last_error = True, bad_gateway(upstream.url)
                if state is candidates[-1]:
                    candidates.append(state)
                continue
            except ReadTimeout as exc:
                raise gateway_timeout(upstream.url) from exc
            except UpstreamError as exc:
                raise bad_gateway(upstream.url) from exc
            catalog.mark_up(state)
            return await relay(answer, row, send, started, extra, asked is not None)
        finally:
            state.in_flight -= 1
            if gate is not None:
                gate.leave()
    assert last_error is not None
    raise last_error


async def relay(
    answer: Answer,
    row: RequestRow,
    send: Send,
    started: float,
    extra: Sequence[tuple[bytes, bytes]],
    asked: bool,
) -> Meter | None:
    complete = False
    content_type = answer.header(b"content-type").decode("latin-1")
    meter = meter_for(content_type, answer.header(b"content-encoding").decode("latin-1"))
    try:
        row.status = answer.status
        row.stream = content_type.startswith("text/event-stream")
        stripper = UsageStripper() if asked and isinstance(meter, SseMeter) else None
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": client_headers(answer.headers, row.request_id.encode(), extra),
            }
        )
        row.ttfb_ms = (time.perf_counter() - started) * 1000
        last = b""  # the last two bytes relayed: does the stream stop between two events?
        try:
            async for chunk in answer.chunks():
                if meter is not None:
                    meter.feed(chunk)
                if stripper is not None:
                    chunk = stripper.feed(chunk)
                    if not chunk:
                        continue
                row.bytes_out += len(chunk)
                last = chunk[-2:] if len(chunk) > 1 else (last + chunk)[-2:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if stripper is not None and (tail := stripper.flush()):
                row.bytes_out += len(tail)
                await send({"type": "http.response.body", "body": tail, "more_body": True})
        except UpstreamError as exc:
            row.error = f"upstream cut: {exc}"
            if not row.stream:
                raise UpstreamCut(row.error) from exc
            cut = ProxyError(
                502,
                "The upstream stopped in the middle of the answer",
                "upstream_cut",
                type="server_error",
            )
            # A line cut short is ended first, so that the error is an event of its own.
            event = sse_error(cut) if last in (b"", b"\n\n") else b"\n\n" + sse_error(cut)
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return meter
        complete = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return meter
    finally:
        if meter is not None:
            row.prompt_tokens, row.completion_tokens = meter.usage()
            if not complete and isinstance(meter, SseMeter) and row.completion_tokens is None:
                row.completion_tokens, row.usage_estimated = meter.pieces, True
        if complete:
            answer.release()
        else:
            answer.close()


async def send_body(
    send: Send, status: int, body: bytes, request_id: str, extra: Iterable[tuple[bytes, bytes]] = ()
) -> int:
    """Send a complete JSON answer of our own; returns its size."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return len(body)


async def send_json(send: Send, status: int, document: Any, request_id: str) -> int:
    return await send_body(send, status, json.dumps(document).encode(), request_id)
