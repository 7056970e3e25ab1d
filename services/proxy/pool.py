"""Connections to the upstreams: a small HTTP/1.1 client on asyncio protocols and httptools.

The proxy's upstream requests are all alike (a whole body to send, an answer to relay as it
arrives), so the client does only that, at about a tenth of a general client's cost per request
(see docs/performance.md):

- Kept-alive connections per origin, reused newest first; one the upstream has closed while idle
  is dropped when taken. `Pool.request` raises `ConnectFailed` (nothing was sent: the request
  may go elsewhere), `Dropped` (the connection closed before any byte of an answer: a reused one
  the upstream had just closed), or `ReadTimeout`.
- The answer's head is returned as soon as it arrives (header names in lower case); its body
  is read with `Answer.chunks()`, chunked framing removed, content untouched (no
  decompression). A body that ends early raises
  `Cut`. Reading pauses while more than READ_BUFFER bytes wait to be relayed, so a slow client
  holds a bounded buffer and backpressure reaches the upstream.
- `read_timeout`: the longest silence allowed while waiting for the answer or its next bytes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import httptools

READ_BUFFER = 256 * 1024
Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    pass


class ConnectFailed(UpstreamError):
    """No connection could be made (refused, unreachable, or not within the connect timeout)."""


class Dropped(UpstreamError):
    """The connection closed before any byte of an answer."""


class ReadTimeout(UpstreamError):
    """The upstream was silent for longer than the read timeout."""


class Cut(UpstreamError):
    """The connection failed in the middle of an answer."""


class Answer:
    """An upstream's answer: status and headers at once, the body as it arrives."""

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, status: int, headers: Headers, connection: Connection) -> None:
        self.status = status
        self.headers = headers
        self._connection = connection

    def header(self, name: bytes) -> bytes:
        """The first value of header `name` (lower case), or b""."""
        for key, value in self.headers:
            if key == name:
                return value
        return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            chunk = await connection.next_chunk()
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it can be reused,
        else it is closed."""
        self._connection.finish()

    def close(self) -> None:
        self._connection.close()


class Connection(asyncio.Protocol):
    """One connection to an upstream and the answer currently on it."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._head: asyncio.Future[Answer] | None = None
        self._headers: Headers = []
        self._answer: Answer | None = None
        self._no_body = False
        self._keep_alive = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._failure: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Cut(f"bad HTTP from the upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head is not None and not self._head.done():
            self._head.set_exception(Dropped("the upstream closed the connection"))
        elif self._answer is not None and not self._complete:
            length = self._answer.header(b"content-length")
            chunked = b"chunked" in self._answer.header(b"transfer-encoding").lower()
            if length or chunked:
                self._fail(Cut("the upstream closed the connection in the middle of the answer"))
            else:  # a body delimited by the end of the connection
                self._complete = True
                self._wake()
        self._stop_timer()

    # httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))  # names in lower case, as ASGI has them

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints): the real one follows
            self._headers = []
            return
        self._answer = Answer(status, self._headers, self)
        self._keep_alive = self._parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(self._answer)
        if self._no_body:  # the answer to HEAD: a Content-Length, but no body follows
            self._complete = True
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > READ_BUFFER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._answer is None:  # the end of an interim answer
            return
        self._complete = True
        self._wake()

    # Requests ---------------------------------------------------------------------------

    def send(self, request: bytes, no_body: bool, read_timeout: float) -> asyncio.Future[Answer]:
        self._reset()
        self._no_body = no_body
        self._head = self.loop.create_future()
        self._read_timeout = read_timeout
        self._last_read = self.loop.time()
        self._timer = self.loop.call_at(self._last_read + read_timeout, self._check_silence)
        assert self.transport is not None
        self.transport.write(request)
        return self._head

    def _check_silence(self) -> None:
        if self._complete or self.closed:
            return
        deadline = self._last_read + self._read_timeout
        if self.loop.time() < deadline or self._paused:  # reading, or held back by the client
            self._timer = self.loop.call_at(
                max(deadline, self.loop.time() + 0.1), self._check_silence
            )
            return
        error = ReadTimeout(f"no answer within {self._read_timeout:g} s")
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._fail(error)
        self.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def next_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises Cut or ReadTimeout."""
        while not self._body:
            if self._failure is not None:
                raise self._failure
            if self._complete:
                self._stop_timer()
                return b""
            self._waiter = self.loop.create_future()
            await self._waiter
        chunk = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_read = self.loop.time()
            self.transport.resume_reading()
        return chunk

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._failure is None:
            self._failure = error
        self._wake()

    def finish(self) -> None:
        """The caller is done with this answer."""
        self._stop_timer()
        if self._complete and not self.closed and self._keep_alive:
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._stop_timer()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class Origin:
    """Where an upstream is: scheme, host, port, and the Host header it expects."""

    __slots__ = ("host", "host_header", "idle", "port", "scheme")

    def __init__(self, scheme: str, host: str, port: int, host_header: bytes) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.host_header = host_header
        self.idle: deque[Connection] = deque()


class Pool:
    def __init__(self, connect_timeout: float, read_timeout: float, keepalive: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.loop = asyncio.get_running_loop()
        self._origins: dict[str, Origin] = {}
        self._ssl: ssl.SSLContext | None = None
        self._sweeper = self.loop.call_later(keepalive, self._sweep)

    def origin(self, url: str) -> Origin:
        """The Origin of `url` (`scheme://host[:port]`, as `Upstream.origin` has it)."""
        origin = self._origins.get(url)
        if origin is None:
            parts = urlsplit(url)
            assert parts.hostname is not None
            port = parts.port or (443 if parts.scheme == "https" else 80)
            origin = Origin(parts.scheme, parts.hostname, port, parts.netloc.encode())
            self._origins[url] = origin
        return origin

    async def request(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Answer:
        """Send a request, return its answer's head. Raises UpstreamError."""
        head = [method.encode("latin-1"), b" ", target, b" HTTP/1.1\r\nhost: ", origin.host_header]
        for name, value in headers:
            head += (b"\r\n", name, b": ", value)
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            head += (b"\r\ncontent-length: ", str(len(body)).encode())
        head.append(b"\r\n\r\n")
        request = b"".join(head) + body
        connection = await self._connection(origin)
        try:
            return await connection.send(request, method == "HEAD", self.read_timeout)
        except BaseException:
            connection.close()
            raise

    async def fetch(
        self, url: str, headers: Sequence[tuple[bytes, bytes]], seconds: float
    ) -> tuple[int, bytes]:
        """GET `url` whole (status and body) within `seconds`. Raises UpstreamError or
        TimeoutError."""
        parts = urlsplit(url)
        origin = self.origin(f"{parts.scheme}://{parts.netloc}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        async with asyncio.timeout(seconds):
            answer = await self.request(origin, "GET", target.encode(), headers, b"")
            done = False
            try:
                body = b"".join([chunk async for chunk in answer.chunks()])
                done = True
            finally:
                answer.release() if done else answer.close()
        return answer.status, body

    async def _connection(self, origin: Origin) -> Connection:
        idle = origin.idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        secure = origin.scheme == "https"
        if secure and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await self.loop.create_connection(
                    lambda: Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=self._ssl if secure else None,
                )
        except TimeoutError as exc:
            raise ConnectFailed(f"no connection within {self.connect_timeout:g} s") from exc
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from exc
        return connection

    def put_back(self, connection: Connection) -> None:
        connection.idle_since = time.monotonic()
        connection.origin.idle.append(connection)

    def _sweep(self) -> None:
        """Close connections idle for longer than `keepalive`."""
        cutoff = time.monotonic() - self.keepalive
        for origin in self._origins.values():
            while origin.idle and origin.idle[0].idle_since < cutoff:
                origin.idle.popleft().close()
        self._sweeper = self.loop.call_later(self.keepalive / 4, self._sweep)

    def close(self) -> None:
        self._sweeper.cancel()
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop().close()
