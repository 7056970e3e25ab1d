"""A fake OpenAI-compatible upstream: a real HTTP server on loopback, in a thread of the tests.

It serves `/v1/models`, chat completions (plain and SSE, optionally paced), completions,
embeddings, `/v1/echo` (tells what it received) and `/v1/gzip` (a gzip-encoded JSON body), and
remembers every request it got and when a streaming client went away. A held upstream
answers a completion only when the test releases one, so that a test can say what is in flight
instead of guessing it from the clock.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux's value; Python names it from 3.12


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeUpstream:
    name: str
    models: list[str]
    key: str = ""
    pace: float = 0.0  # seconds between SSE chunks
    chunks: int = 5
    hang_models: bool = False
    cut_after: int | None = None  # drop the connection after this many SSE chunks
    hang: bool = False  # accept completions and never answer
    delay: float = 0.0  # seconds before answering a completion
    think: float = 0.0  # seconds between a stream's start (its headers) and its first chunk
    linger: float = 0.0  # seconds between a stream's `data: [DONE]` and its end
    line_end: str = "\n"  # how a stream's lines end: LF, or CRLF (as SSE allows too)
    held: bool = False  # answer a completion (or a stream's rest) only when the test lets it
    refuse_status: int | None = None  # answer completions with this status (429, 503...)
    retry_after: str | None = None  # ... and this Retry-After header
    refuse_code: str | None = None  # ... and this OpenAI error code
    drop: bool = False  # close the connection on a completion, without a byte of answer
    usage: bool = True  # honour stream_options.include_usage, as OpenAI and vLLM do
    active: int = 0  # completions being answered now
    peak: int = 0  # the most answered at once
    seen: list[Seen] = field(default_factory=list)
    stream_closed: list[float] = field(default_factory=list)  # when a stream's client left
    arrivals: list[str] = field(default_factory=list)  # each completion's last message, in order
    port: int = 0
    # Where it listens: loopback, or a container bridge's address for tests/container (bound
    # with IP_FREEBIND, as the bridge may come up only with the first container).
    host: str = "127.0.0.1"

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._turns = asyncio.Semaphore(0)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self.handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await self._runner.setup()
            if self.host == "127.0.0.1":
                site: web.BaseSite = web.TCPSite(self._runner, self.host, self.port)
            else:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                sock.bind((self.host, 0))
                site = web.SockSite(self._runner, sock)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            await self._runner.cleanup()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def release(self, count: int = 1) -> None:
        """Let `count` more held completions answer (those waiting now or the next to come)."""
        for _ in range(count):
            self._loop.call_soon_threadsafe(self._turns.release)

    # Handlers -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.rel_url.raw_query_string,
                dict(request.headers),
                body,
            )
        )
        path = request.path
        if path == "/v1/models":
            if self.hang_models:
                await asyncio.sleep(3600)
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "owned_by": self.name} for m in self.models
                    ],
                }
            )
        if path == "/v1/echo":
            return web.json_response(
                {
                    "upstream": self.name,
                    "method": request.method,
                    "path": path,
                    "query": request.rel_url.raw_query_string,
                    "raw_path": request.raw_path,
                    "headers": dict(request.headers),
                    "body": body.decode("latin-1"),
                }
            )
        if path == "/v1/gzip":
            payload = json.dumps({"upstream": self.name, "filler": "x" * 20000}).encode()
            return web.Response(
                body=gzip.compress(payload),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        if self.hang:
            await asyncio.sleep(3600)
        if self.drop:
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(3600)  # cancelled by the closed connection
        if self.refuse_status is not None:
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            error = {
                "error": {
                    "message": f"{self.name} refused",
                    "type": "rate_limit",
                    "param": None,
                    "code": self.refuse_code,
                }
            }
            return web.json_response(error, status=self.refuse_status, headers=headers)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            self.arrivals.append(_last_message(body))
            if self.held and not _streamed(body):  # a stream holds after its first chunk
                await self._turns.acquire()
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self.complete(request, path, body)
        finally:
            self.active -= 1

    async def complete(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        document: dict[str, Any] = json.loads(body) if body else {}
        model = document.get("model", "")
        if path == "/v1/chat/completions" and document.get("stream"):
            return await self.stream(request, model, document)
        if path == "/v1/chat/completions":
            return web.json_response(
                self.completion(
                    model,
                    "chat.completion",
                    {"message": {"role": "assistant", "content": f"hello from {self.name}"}},
                )
            )
        if path == "/v1/completions":
            return web.json_response(
                self.completion(model, "text_completion", {"text": f"hello from {self.name}"})
            )
        if path == "/v1/embeddings":
            return web.json_response(
                {
                    "object": "list",
                    "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "usage": {"prompt_tokens": 4, "total_tokens": 4},
                }
            )
        return web.json_response({"error": {"message": f"no route {path}"}}, status=404)

    def completion(self, model: str, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": kind,
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", **choice}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }

    async def stream(
        self, request: web.Request, model: str, document: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.think:
            await asyncio.sleep(self.think)
        # Asked for usage, OpenAI and vLLM add `"usage": null` to every chunk and end with a
        # usage-only chunk.
        include_usage = self.usage and (document.get("stream_options") or {}).get("include_usage")
        try:
            for i in range(self.chunks):
                if i == self.cut_after and request.transport is not None:
                    request.transport.abort()
                    return response
                chunk: dict[str, Any] = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": f"{self.name}{i} "}}],
                }
                if include_usage:
                    chunk["usage"] = None
                await response.write(f"data: {json.dumps(chunk)}{self.line_end * 2}".encode())
                if self.held and i == 0:  # the stream has started; the rest waits for the test
                    await self._turns.acquire()
                if self.pace:
                    await asyncio.sleep(self.pace)
            if include_usage:
                usage = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 11,
                        "completion_tokens": self.chunks,
                        "total_tokens": 11 + self.chunks,
                    },
                }
                await response.write(f"data: {json.dumps(usage)}{self.line_end * 2}".encode())
            await response.write(f"data: [DONE]{self.line_end * 2}".encode())
            if self.linger:
                await asyncio.sleep(self.linger)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.stream_closed.append(time.monotonic())
            raise
        return response


def _last_message(body: bytes) -> str:
    """The content of a chat request's last message ("" for anything else)."""
    try:
        return str(json.loads(body)["messages"][-1]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _streamed(body: bytes) -> bool:
    try:
        return json.loads(body).get("stream") is True
    except (ValueError, AttributeError):
        return False
