"""The proxy's ASGI plumbing: the types of `receive` and `send`, reading a request (its key,
content type, declared length and body), knowing whether the answer has started, noticing a
client that leaves, and writing the proxy's own answers (a whole JSON body; an error as the last
event of an SSE stream). Everything else in the proxy speaks to the client through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from services.proxy import errors
from services.proxy.errors import ProxyError

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Response:
    """The ASGI `send` of one request, knowing whether the answer has started (so that the
    error boundary knows whether it can still answer)."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class DisconnectWatch:
    """Cancels the request's task when the client disconnects before the answer is complete.

    It starts listening only once the request has taken ARM_AFTER seconds: most answers come
    sooner, and a listening task per request costs more than a timer.
    """

    ARM_AFTER = 0.05

    def __init__(self, receive: Receive, arm_after: float = ARM_AFTER) -> None:
        self.gone = False
        self._closed = False
        self._receive = receive
        self._task = asyncio.current_task()
        self._watch: asyncio.Future[dict[str, Any]] | None = None
        self._timer = asyncio.get_running_loop().call_later(arm_after, self._arm)

    def _arm(self) -> None:
        self._watch = asyncio.ensure_future(self._receive())
        self._watch.add_done_callback(self._fired)

    def _fired(self, watch: asyncio.Future[dict[str, Any]]) -> None:
        if self._closed or watch.cancelled() or watch.exception() is not None:
            return
        if watch.result()["type"] != "http.disconnect":
            self._arm()  # an empty trailing body message; keep listening
        elif self._task is not None:
            self.gone = True
            self._task.cancel()

    def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()


def request_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str, int | None]:
    """The API key (Bearer, `api-key` or `x-api-key`), content type and declared length."""
    key = content_type = length = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                key = token.strip()
        elif name in (b"api-key", b"x-api-key") and key is None:
            key = value.decode("latin-1").strip() or None
        elif name == b"content-type":
            content_type = value.decode("latin-1").lower()
        elif name == b"content-length":
            with contextlib.suppress(ValueError):
                length = int(value)
    return key, content_type or "", length


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise errors.payload_too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.payload_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def discard_body(receive: Receive, limit: int) -> None:
    """Read and drop the body of a request refused before it was read. nginx streams bodies to
    the proxy (`proxy_request_buffering off`); answered before it had sent the whole body, it
    closed the client's kept-alive connection now and then without saying so, and the client's
    next request on it failed. Stops at the body's end, when the client leaves, or past `limit`
    (a client still sending that much is not waited for)."""
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


def sse_error(error: ProxyError) -> bytes:
    return b"data: " + error.body() + b"\n\n"


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
