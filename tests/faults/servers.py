"""Misbehaving upstreams: raw asyncio HTTP/1.1 servers on 127.0.0.1, each in its own thread.

A `FaultServer` answers `GET /v1/models` like a real upstream (unless told to misbehave there
too) and every other request with its `behaviour`, a coroutine that writes whatever bytes it
likes to the socket: nothing at all, a body byte by byte, half a body, broken SSE, a huge body,
an error of its own. It can also go down and come back on the same port (`down()` / `up()`),
and it counts what it wrote and when a client went away, so tests can tell what reached whom.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Reply:
    """What a behaviour writes with: counts bytes and waits for the socket to drain."""

    def __init__(self, server: FaultServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.server.written += len(data)

    async def head(self, status: int, headers: dict[str, str], reason: str = "X") -> None:
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
        await self.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def abort(self) -> None:
        """Drop the connection at once (RST), as a crashing upstream does."""
        self.writer.transport.abort()


# A behaviour answers one request; it returns True to keep the connection for the next one.
Behaviour = Callable[[Request, Reply], Awaitable[bool | None]]


@dataclass(eq=False)
class FaultServer:
    behaviour: Behaviour
    models: list[str] = field(default_factory=lambda: ["model-f"])
    models_too: bool = False  # apply the behaviour to GET /v1/models as well
    port: int = 0
    written: int = 0
    requests: list[Request] = field(default_factory=list)
    gone: int = 0  # connections the client closed while the behaviour was still running

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultServer:
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # answering, not waiting for a request
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault", daemon=True)
        self._thread.start()
        self.up()
        return self

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def up(self) -> None:
        """Listen (again, on the same port)."""

        async def listen() -> None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

        self._call(listen())

    def down(self, graceful: bool = False) -> None:
        """Stop listening and drop every open connection, as a crash does: new connections are
        refused. `graceful`: finish the answers under way first, as a clean restart does."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for task in list(self._handlers):
                if not graceful or task not in self._busy:
                    task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        self._call(close())

    def stop(self) -> None:
        self.down()

        async def settle() -> None:
            # Connections accepted as the server went down (the proxy keeps connecting: its
            # health checks) run their handlers to the end, which close them: a handler left
            # unstarted when the loop stops left its transport to the garbage collector, and
            # a later test failed on the ResourceWarning.
            for _ in range(10):
                rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                if not rest:
                    return
                await asyncio.gather(*rest, return_exceptions=True)

        self._call(settle())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # Serving ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while self._server is not None and (request := await _read_request(reader)):
                self._busy.add(task)
                self.requests.append(request)
                reply = Reply(self, writer)
                if request.path.endswith("/models") and not self.models_too:
                    data = [{"id": m, "object": "model", "owned_by": "fault"} for m in self.models]
                    await send_json(reply, 200, {"object": "list", "data": data}, keep_alive=True)
                    self._busy.discard(task)
                    continue
                if not await self.behaviour(request, reply):
                    break
                self._busy.discard(task)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.gone += 1
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        finally:
            self._handlers.discard(task)
            self._busy.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    first, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = first.split(" ", 2)
    headers = {}
    for line in lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    return Request(method, path, headers, body)


async def send_json(reply: Reply, status: int, document: Any, keep_alive: bool = False) -> None:
    body = json.dumps(document).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    if not keep_alive:
        headers["Connection"] = "close"
    await reply.head(status, headers)
    await reply.write(body)


def completion(model: str = "model-f") -> dict[str, Any]:
    """A chat completion with usage (7 prompt, 3 completion tokens)."""
    return {
        "id": "cmpl-f",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def sse_events(count: int, usage: bool = True) -> bytes:
    """`count` chat-completion chunks, a usage chunk (11 prompt tokens, `count` completion
    tokens) and [DONE]."""
    events = []
    for i in range(count):
        chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": f"{i} "}}]}
        events.append(f"data: {json.dumps(chunk)}\n\n")
    if usage:
        tokens = {"prompt_tokens": 11, "completion_tokens": count, "total_tokens": 11 + count}
        events.append(f"data: {json.dumps({'choices': [], 'usage': tokens})}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


SSE_HEAD = {"Content-Type": "text/event-stream", "Connection": "close"}


async def healthy(request: Request, reply: Reply) -> bool:
    """A good upstream: a completion, on a connection kept alive."""
    model = json.loads(request.body or b"{}").get("model", "model-f")
    await send_json(reply, 200, completion(model), keep_alive=True)
    return True


def refused_url() -> str:
    """The URL of a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def fault_server(behaviour: Behaviour, **options: Any) -> Any:
    server = FaultServer(behaviour, **options).start()
    try:
        yield server
    finally:
        server.stop()
