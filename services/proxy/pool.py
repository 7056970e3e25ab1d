"""The proxy's own upstream client: HTTP/1.1 on asyncio protocols and httptools.

The proxy's upstream requests are all alike (a whole body to send, an answer to relay as it
arrives), so this client does only that, at a fraction of a general client's cost per request
(see docs/performance.md). It implements `upstream.UpstreamClient`; the failures and when a
request is sent again are stated there.

A connection is CONNECTING, ACTIVE (one request and its answer), IDLE (kept alive in its
origin's pool) or CLOSED. An idle connection is never reused when anything arrived on it
(unread bytes or the upstream's close: it is closed at once, and checked again when taken) or
when it is older than its keep-alive (the endpoint's, or less if the upstream said less in a
`Keep-Alive: timeout=N` header): this is where the stale keep-alive race is avoided.

The answer's head is returned as soon as it arrives (header names in lower case); its body is
read with `Answer.chunks()`, chunked framing removed, content untouched. Anything after the end
of the answer (a second answer in the same read, say) closes the connection instead of being
read as part of it; trailer fields are dropped. A body delimited by the end of the connection
is complete only on a clean close, not on a reset. Reading pauses while more than READ_BUFFER
bytes wait to be relayed, so a slow client holds a bounded buffer and backpressure reaches
the upstream. `read_timeout` is the longest silence allowed while waiting for the answer or
its next bytes.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from enum import Enum

import httptools

from services.proxy.upstream import (
    IDEMPOTENT,
    BadAnswer,
    Busy,
    CertificateRefused,
    ConnectFailed,
    Cut,
    Dropped,
    Endpoint,
    FetchThroughRequest,
    Headers,
    ListedHeaders,
    ReadTimeout,
    UpstreamError,
)

READ_BUFFER = 256 * 1024


class State(Enum):
    CONNECTING = "connecting"
    ACTIVE = "active"
    IDLE = "idle"
    CLOSED = "closed"


class _Unanswered(Exception):
    """Internal: the connection closed with no byte of an answer; `written` says whether the
    whole request had left this process."""

    def __init__(self, written: bool) -> None:
        super().__init__("the upstream closed the connection without answering")
        self.written = written


class _Unsolicited(Exception):
    """Internal: a message began after the answer had ended."""


class OwnAnswer(ListedHeaders):
    """An upstream's answer: status and headers at once, the body as it arrives."""

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, status: int, headers: Headers, connection: Connection) -> None:
        self.status = status
        self.headers = headers
        self._connection = connection

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            chunk = await connection.next_chunk()
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
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
        self.state = State.CONNECTING
        self.reused = False
        self.expires = 0.0  # when IDLE: the loop time after which it is not reused
        self.keepalive = origin.endpoint.keepalive
        self._parser = httptools.HttpResponseParser(self)
        self._poll: select.poll | None = None  # the socket, for a look before reuse
        self._reset()

    def _reset(self) -> None:
        self._head: asyncio.Future[OwnAnswer] | None = None
        self._headers: Headers = []
        self._answer: OwnAnswer | None = None
        self._no_body = False
        self._keep_alive = False
        self._received = False  # a byte of this request's answer arrived
        self._unsent = False  # part of the request still waits in the transport
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._failure: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # resume_writing() then says when the whole request has left this process. (A write
        # that completes at once, the usual case, never pauses the protocol.)
        self.transport.set_write_buffer_limits(high=0)  # type: ignore[union-attr]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def resume_writing(self) -> None:
        self._unsent = False

    def data_received(self, data: bytes) -> None:
        if self.state is not State.ACTIVE:  # unread bytes on an idle connection
            self.close()
            return
        self._received = True
        self._last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # A message after the end of the answer: not part of it, and the connection can
            # no longer be trusted. (Any other callback error is a parse error below.)
            if not self._complete:
                self._bad(BadAnswer("the upstream's answer could not be read"))
            self.close()
        except httptools.HttpParserError as exc:
            self._bad(BadAnswer(f"malformed answer: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = State.CLOSED
        self._poll = None  # its descriptor is closed, and may be another socket's soon
        self.pool.forget(self)
        self._stop_timer()
        if was is not State.ACTIVE:
            return
        if self._head is not None and not self._head.done():
            if self._received:
                self._head.set_exception(Dropped("the upstream closed in the middle of the head"))
            else:
                self._head.set_exception(_Unanswered(written=not self._unsent))
        elif self._answer is not None and not self._complete:
            delimited = self._answer.header(b"content-length") or b"chunked" in (
                self._answer.header(b"transfer-encoding").lower()
            )
            if delimited:
                self._fail(Cut("the upstream closed the connection in the middle of the answer"))
            elif exc is not None:  # ended by the connection: only a clean close ends it well
                self._fail(Cut(f"the connection was reset before the end of the answer: {exc}"))
            else:
                self._complete = True
                self._wake()

    # httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Unsolicited

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._answer is None:  # after the head: a trailer field, never promoted
            self._headers.append((name.lower(), value))  # names in lower case, as ASGI has them

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints): the real one follows
            self._headers = []
            return
        answer = self._answer = OwnAnswer(status, self._headers, self)
        self._keep_alive = self._parser.should_keep_alive()
        hint = answer.header(b"keep-alive")
        if hint:
            self._keep_alive_hint(hint)
        if self._head is not None and not self._head.done():
            self._head.set_result(answer)
        if self._no_body:  # the answer to HEAD: a Content-Length, but no body follows
            self._complete = True
            self._keep_alive = False  # the parser would wait for that body
            self._wake()

    def _keep_alive_hint(self, value: bytes) -> None:
        """`Keep-Alive: timeout=N`: the upstream closes idle connections after N seconds."""
        for part in value.split(b","):
            name, _, number = part.partition(b"=")
            if name.strip().lower() == b"timeout" and number.strip().isdigit():
                seconds = int(number)
                # A second of margin for the race between its close and our next request.
                self.keepalive = min(self.keepalive, max(seconds - 1.0, seconds / 2))

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

    def send(self, request: bytes, no_body: bool, read_timeout: float) -> asyncio.Future[OwnAnswer]:
        transport = self.transport
        assert transport is not None
        if transport.is_closing():  # found closed before the request was written
            raise _Unanswered(written=False)
        self._reset()
        self.state = State.ACTIVE
        self._no_body = no_body
        self._head = self.loop.create_future()
        self._read_timeout = read_timeout
        self._last_read = self.loop.time()
        self._timer = self.loop.call_at(self._last_read + read_timeout, self._check_silence)
        transport.write(request)
        self._unsent = transport.get_write_buffer_size() > 0
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
        """The next piece of the body; b"" at its end. Raises Cut, BadAnswer or ReadTimeout."""
        while not self._body:
            if self._complete:
                self._stop_timer()
                return b""
            if self._failure is not None:
                raise self._failure
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

    def _bad(self, error: BadAnswer) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._fail(error)
        self.close()

    def finish(self) -> None:
        """The caller is done with this answer."""
        self._stop_timer()
        if self._complete and self.state is State.ACTIVE and self._keep_alive:
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._stop_timer()
        self._poll = None
        if self.state is not State.CLOSED:
            if self.state is State.ACTIVE and not self._complete:
                self._fail(Cut("closed"))
            self.state = State.CLOSED
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def readable(self) -> bool:
        """Whether the socket has anything to read (bytes, or the upstream's close) that the
        event loop has not delivered yet: one poll(2) on a descriptor registered once."""
        if self._poll is None:
            return False
        try:
            return bool(self._poll.poll(0))
        except OSError:
            return True


class Origin:
    """One endpoint's connections: the idle ones (newest last), how many are open, and the
    requests waiting for one when `max_connections` are."""

    __slots__ = ("absolute", "connecting", "endpoint", "host_header", "idle", "open", "waiters")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        # What every request's head repeats, computed once (an IDNA encoding is not cheap).
        self.host_header = endpoint.host_header
        plain_proxy = endpoint.proxy is not None and endpoint.scheme == "http"
        self.absolute = endpoint.origin.encode() if plain_proxy else b""  # to a proxy: absolute
        self.idle: deque[Connection] = deque()
        self.open: set[Connection] = set()
        self.connecting = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Pool(FetchThroughRequest):
    """Kept-alive connections per endpoint, at most `max_connections` each."""

    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = 1024,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.loop = asyncio.get_running_loop()
        self._origins: dict[Endpoint, Origin] = {}
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def origin(self, endpoint: Endpoint) -> Origin:
        origin = self._origins.get(endpoint)
        if origin is None:
            origin = self._origins[endpoint] = Origin(endpoint)
        return origin

    async def request(
        self,
        endpoint: Endpoint,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> OwnAnswer:
        """Send a request, return its answer's head. Raises UpstreamError."""
        origin = self.origin(endpoint)
        proxy = endpoint.proxy
        head = [method.encode("latin-1"), b" ", origin.absolute, target, b" HTTP/1.1\r\nhost: "]
        head.append(origin.host_header)
        if origin.absolute and proxy is not None and proxy.authorization:
            head += (b"\r\nproxy-authorization: ", proxy.authorization)
        for name, value in headers:
            head += (b"\r\n", name, b": ", value)
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            head += (b"\r\ncontent-length: ", str(len(body)).encode())
        head.append(b"\r\n\r\n")
        request = b"".join(head) + body
        fresh = False
        while True:
            connection = await self._connection(origin, fresh)
            try:
                return await connection.send(request, method == "HEAD", self.read_timeout)
            except _Unanswered as exc:
                connection.close()
                # Sent again only if the upstream cannot have run it: the request never left
                # whole, or an idempotent one got nothing back on a reused connection.
                if not fresh and (not exc.written or (connection.reused and method in IDEMPOTENT)):
                    fresh = True
                    continue
                raise Dropped(str(exc)) from None
            except BaseException:
                connection.close()
                raise

    async def _connection(self, origin: Origin, fresh: bool) -> Connection:
        idle = origin.idle
        now = self.loop.time()
        while idle and not fresh:
            connection = idle.pop()
            if connection.closed or connection.expires < now or connection.readable():
                connection.close()
                continue
            connection.reused = True
            return connection
        while len(origin.open) + origin.connecting >= self.max_connections:
            if idle:  # the oldest idle connection makes way
                idle.popleft().close()
                continue
            waiter = self.loop.create_future()
            origin.waiters.append(waiter)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await waiter
            except TimeoutError:
                raise Busy(
                    f"all {self.max_connections} connections stayed busy"
                    f" for {self.connect_timeout:g} s"
                ) from None
            finally:
                waiter.cancel()
            if idle and not fresh:
                return await self._connection(origin, fresh)
        return await self._connect(origin)

    async def _connect(self, origin: Origin) -> Connection:
        origin.connecting += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = await self._open(origin)
        except TimeoutError as exc:
            raise ConnectFailed(f"no connection within {self.connect_timeout:g} s") from exc
        except ssl.SSLCertVerificationError as exc:
            raise CertificateRefused(f"certificate refused: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS: {exc.reason or exc}") from exc
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from exc
        finally:
            origin.connecting -= 1
        if not connection.closed:  # (closed already: send() will say so)
            origin.open.add(connection)
        return connection

    async def _open(self, origin: Origin) -> Connection:
        endpoint = origin.endpoint
        secure = endpoint.scheme == "https"
        context = endpoint.ssl if secure else None
        if secure and context is None:
            context = ssl.create_default_context()
        proxy = endpoint.proxy
        if proxy is None or not secure:
            where = endpoint if proxy is None else proxy
            host, port = where.host, where.port
            _, connection = await self.loop.create_connection(
                lambda: Connection(self, origin),
                host,
                port,
                ssl=context,
                server_hostname=endpoint.host if secure else None,
            )
            return connection
        sock = await self._tunnel(endpoint)
        try:
            _, connection = await self.loop.create_connection(
                lambda: Connection(self, origin),
                sock=sock,
                ssl=context,
                server_hostname=endpoint.host,
            )
        except BaseException:
            sock.close()
            raise
        return connection

    async def _tunnel(self, endpoint: Endpoint) -> socket.socket:
        """A socket to `endpoint` through its proxy's CONNECT."""
        proxy = endpoint.proxy
        assert proxy is not None
        infos = await self.loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"no address for {proxy.host}")
        for family, kind, protocol, _, address in infos:
            sock = socket.socket(family, kind, protocol)
            sock.setblocking(False)
            try:
                await self.loop.sock_connect(sock, address)
                break
            except OSError as exc:
                sock.close()
                error = exc
        else:
            raise error
        try:
            authority = endpoint.host_header
            request = b"CONNECT " + authority + b" HTTP/1.1\r\nhost: " + authority + b"\r\n"
            if proxy.authorization:
                request += b"proxy-authorization: " + proxy.authorization + b"\r\n"
            await self.loop.sock_sendall(sock, request + b"\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                data = await self.loop.sock_recv(sock, 4096)
                if not data or len(reply) > 65536:
                    raise ConnectFailed("the proxy closed the connection during CONNECT")
                reply += data
            status = reply.split(b"\r\n", 1)[0].split(b" ")
            if len(status) < 2 or not status[1].startswith(b"2"):
                line = reply.split(b"\r\n", 1)[0].decode("latin-1")
                raise ConnectFailed(f"the proxy refused CONNECT: {line}")
        except BaseException:
            sock.close()
            raise
        return sock

    def put_back(self, connection: Connection) -> None:
        connection.state = State.IDLE
        connection.expires = self.loop.time() + connection.keepalive
        origin = connection.origin
        origin.idle.append(connection)
        if origin.waiters:
            origin.wake_one()

    def forget(self, connection: Connection) -> None:
        """A connection closed: it no longer counts against its origin's cap."""
        origin = connection.origin
        if connection in origin.open:
            origin.open.discard(connection)
            if origin.waiters:
                origin.wake_one()

    def _sweep(self) -> None:
        """Close idle connections past their keep-alive."""
        now = self.loop.time()
        for origin in self._origins.values():
            idle = origin.idle
            for connection in [c for c in idle if c.expires < now or c.closed]:
                idle.remove(connection)
                connection.close()
        self._sweeper = self.loop.call_later(0.5, self._sweep)

    async def close(self) -> None:
        self._sweeper.cancel()
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop().close()
            for connection in list(origin.open):
                connection.close()
