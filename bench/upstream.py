"""A fast mock OpenAI upstream: `python bench/upstream.py --port N [--procs K]`.

Standalone on purpose (stdlib and uvloop only, no import from the project or from `bench`), so
it can be pointed at by hand and costs as little CPU as possible next to what it measures: raw
asyncio Protocols and a hand-rolled HTTP/1.1 parser with keep-alive and pipelining, request
bodies with Content-Length or (minimally) chunked.

Routes, all answers canned:
- `GET /v1/models`: one model, `bench-model`.
- `POST /v1/chat/completions`: a small `chat.completion` with `usage`; with `"stream": true` in
  the body, an SSE stream of `CHUNKS` `chat.completion.chunk` events (the last one carries
  `usage`) and `data: [DONE]`, with Transfer-Encoding: chunked, one write per event. With
  `"pace_ms": N` too, the first event goes out at once and each next one N ms later.
- `POST /v1/embeddings`: one small embedding.
Anything else is a 404. Requests on one connection are answered strictly in order: while a paced
stream is running, later pipelined requests wait in the buffer.

With `--procs K`, K processes share the port with SO_REUSEPORT; the first one forwards SIGTERM
and SIGINT to the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
from typing import Any, cast

import uvloop

MODEL = "bench-model"
CHUNKS = 50
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
_PACE = re.compile(rb'"pace_ms"\s*:\s*(\d+)')


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nServer: bench-upstream\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _chunk(data: bytes) -> bytes:
    """One piece of a Transfer-Encoding: chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
MODELS = _response(
    "200 OK",
    _json({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}),
)
COMPLETION = _response(
    "200 OK",
    _json(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1767225600,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                }
            ],
            "usage": USAGE,
        }
    ),
)
EMBEDDING = _response(
    "200 OK",
    _json(
        {
            "object": "list",
            "model": MODEL,
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.125, -0.25, 0.5, -1.0] * 8}
            ],
        }
    ),
)
NOT_FOUND = _response("404 Not Found", _json({"error": {"message": "no such route"}}))
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: bench-upstream\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def _events() -> list[bytes]:
    """The stream's events, each already framed as one HTTP chunk."""
    events = []
    for index in range(CHUNKS):
        last = index == CHUNKS - 1
        chunk: dict[str, Any] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": f"tok{index} "},
                    "finish_reason": "stop" if last else None,
                }
            ],
        }
        if last:
            chunk["usage"] = USAGE
        events.append(_chunk(b"data: " + _json(chunk) + b"\n\n"))
    events.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return events


EVENTS = _events()


class Request:
    __slots__ = ("body", "close", "method", "path")

    def __init__(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        self.method, self.path, self.body, self.close = method, path, body, close


class BadRequest(Exception):
    """Not HTTP/1.1 this parser understands: answered with 400 and a close."""


def parse(buffer: bytearray) -> Request | None:
    """Take one complete request off the front of `buffer`, or None if it is not all there."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise BadRequest
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    try:
        method, path, version = lines[0].split(b" ")
    except ValueError as exc:
        raise BadRequest from exc
    length, chunked = 0, False
    close = version == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            value = value.strip().lower()
            close = value == b"close" or (close and value != b"keep-alive")
    start = end + 4
    if chunked:
        parsed = _dechunk(buffer, start)
        if parsed is None:
            return None
        body, start = parsed
    else:
        if length > MAX_BODY:
            raise BadRequest
        if len(buffer) < start + length:
            return None
        body, start = bytes(buffer[start : start + length]), start + length
    del buffer[:start]
    return Request(method, path.partition(b"?")[0], body, close)


def _dechunk(buffer: bytearray, at: int) -> tuple[bytes, int] | None:
    """A chunked body starting at `at`: (body, end offset), or None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buffer.find(b"\r\n", at)
        if eol < 0:
            return None
        try:
            size = int(bytes(buffer[at:eol]).partition(b";")[0], 16)
        except ValueError as exc:
            raise BadRequest from exc
        if size == 0:
            trailers_end = buffer.find(b"\r\n\r\n", eol)  # no trailers: CRLF right after
            if buffer[eol + 2 : eol + 4] == b"\r\n":
                return b"".join(parts), eol + 4
            if trailers_end < 0:
                return None
            return b"".join(parts), trailers_end + 4
        if len(buffer) < eol + 2 + size + 2:
            return None
        parts.append(bytes(buffer[eol + 2 : eol + 2 + size]))
        at = eol + 2 + size + 2


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.streaming is not None:
            self.streaming.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.streaming is None:
            self.serve()

    def serve(self) -> None:
        """Answer every complete request in the buffer, in order, until a paced stream starts."""
        transport = self.transport
        while transport is not None and not transport.is_closing():
            try:
                request = parse(self.buffer)
            except (BadRequest, ValueError):
                transport.write(BAD_REQUEST)
                transport.close()
                return
            if request is None:
                return
            pace = self.answer(transport, request)
            if pace is not None:
                self.streaming = asyncio.get_running_loop().create_task(
                    self.paced(transport, pace, request.close), name="paced-stream"
                )
                return
            if request.close:
                transport.close()

    def answer(self, transport: asyncio.Transport, request: Request) -> float | None:
        """Write the answer; return the pace in seconds for a paced stream still to send."""
        path, body = request.path, request.body
        if path == b"/v1/chat/completions" and request.method == b"POST":
            if b'"stream": true' not in body and b'"stream":true' not in body:
                transport.write(COMPLETION)
                return None
            pace = _PACE.search(body) if b"pace_ms" in body else None
            transport.write(STREAM_HEAD)
            if pace is not None and int(pace.group(1)) > 0:
                return int(pace.group(1)) / 1000
            for event in EVENTS:
                transport.write(event)
        elif path == b"/v1/models" and request.method == b"GET":
            transport.write(MODELS)
        elif path == b"/v1/embeddings" and request.method == b"POST":
            transport.write(EMBEDDING)
        else:
            transport.write(NOT_FOUND)
        return None

    async def paced(self, transport: asyncio.Transport, pace: float, close: bool) -> None:
        try:
            for index, event in enumerate(EVENTS):
                if index:
                    await asyncio.sleep(pace)
                transport.write(event)
        finally:
            self.streaming = None
        if close:
            transport.close()
        else:
            self.serve()


def listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(sock: socket.socket, children: list[int]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(Upstream, sock=sock)
    print(f"bench upstream: listening on {sock.getsockname()} (pid {os.getpid()})", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--procs", type=int, default=1, help="processes sharing the port")
    args = parser.parse_args(argv)
    reuse_port = args.procs > 1
    sock = listen(args.host, args.port, reuse_port)
    children: list[int] = []
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:  # a child binds its own socket: SO_REUSEPORT spreads connections
            sock.close()
            children = []
            sock = listen(args.host, args.port, reuse_port)
            break
        children.append(pid)
    uvloop.run(serve(sock, children))
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
