"""The proxy's own HTTP/1.1 client, against raw servers on loopback that answer as scripted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.proxy.pool import Pool
from services.proxy.upstream import BadAnswer, ConnectFailed, Cut, Dropped, Endpoint, ReadTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def run(handler: Handler, scenario: Callable[[Pool, str], Awaitable[object]], **pool_options):
    async def main():
        tasks: set[asyncio.Task[Any]] = set()

        async def handle(reader, writer):
            tasks.add(asyncio.current_task())  # type: ignore[arg-type]  # in a task, never None
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        keepalive = pool_options.pop("keepalive", 60)
        pool = Pool(**{"connect_timeout": 2, "read_timeout": 2, **pool_options})
        pool.keepalive = keepalive  # type: ignore[attr-defined]  # the test's own note, for at()
        try:
            return await asyncio.wait_for(scenario(pool, f"http://127.0.0.1:{port}"), 20)
        finally:
            await pool.close()
            server.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(main())


def at(pool: Pool, url: str) -> Endpoint:
    """The endpoint of `url`, with the keep-alive the test gave the pool."""
    host, port = url.rsplit(":", 1)
    return Endpoint("http", host.split("//")[1], int(port), keepalive=pool.keepalive)  # type: ignore[attr-defined]


async def whole(pool: Pool, url: str, method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    answer = await pool.request(at(pool, url), method, b"/v1/x", [(b"x-a", b"1")], body)
    data = b"".join([chunk async for chunk in answer.chunks()])
    answer.release()
    return answer.status, data


class KeptAlive:
    """A handler that answers every request with `answer` on a connection it keeps open,
    noting each connection and each request."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections: list[asyncio.StreamWriter] = []
        self.seen: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        while True:
            self.seen.append(await read_request(reader))
            writer.write(self.answer)


def test_connections_are_kept_alive_and_requests_go_out_as_given():
    upstream = KeptAlive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async def scenario(pool, url):
        return [await whole(pool, url, "POST", b'{"a": 1}') for _ in range(3)]

    assert run(upstream, scenario) == [(200, b"ok")] * 3
    assert len(upstream.connections) == 1
    seen = upstream.seen
    assert seen[0] == (
        b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:"
        + seen[0].split(b"127.0.0.1:")[1].split(b"\r")[0]
        + b'\r\nx-a: 1\r\ncontent-length: 8\r\n\r\n{"a": 1}'
    )


def test_chunked_eof_delimited_head_and_interim_answers():
    async def handler(reader, writer):
        while True:
            request = await read_request(reader)
            if request.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b"chunked" in request:
                writer.write(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                )
            else:  # no length: the body ends with the connection
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
                await writer.drain()
                writer.close()
                return

    async def scenario(pool, url):
        chunked = await whole(pool, url, "POST", b"chunked")
        head = await whole(pool, url, "HEAD")  # on the same connection: it was kept alive
        eof = await whole(pool, url, "POST", b"eof")
        return chunked, head, eof

    assert run(handler, scenario) == ((200, b"abcde"), (200, b""), (200, b"until the end"))


def test_an_idle_connection_the_upstream_closed_is_not_reused_and_a_dropped_one_says_so():
    count = 0

    async def handler(reader, writer):
        nonlocal count
        count += 1
        await read_request(reader)
        if count == 3:  # takes the request, then closes without a word
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # closes the kept-alive connection while it is idle

    async def scenario(pool, url):
        first = await whole(pool, url)
        await asyncio.sleep(0.1)
        second = await whole(pool, url)  # the closed one is dropped, a new one made
        with pytest.raises(Dropped):
            await whole(pool, url)
        return first, second

    assert run(handler, scenario) == ((200, b"ok"), (200, b"ok"))


def test_silence_is_a_read_timeout_before_and_within_the_body():
    async def handler(reader, writer):
        request = await read_request(reader)
        if b"partial" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(5)

    async def scenario(pool, url):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout):
            await whole(pool, url, "POST", b"none")
        waited = loop.time() - started
        answer = await pool.request(at(pool, url), "POST", b"/", [], b"partial")
        chunks = answer.chunks()
        assert await anext(chunks) == b"abc"
        with pytest.raises(ReadTimeout):
            await anext(chunks)
        answer.close()
        return waited

    assert 0.3 <= run(handler, scenario, read_timeout=0.3) < 1.0


def test_a_body_cut_short_is_a_cut_and_bad_framing_in_it_a_bad_answer():
    async def handler(reader, writer):
        request = await read_request(reader)
        if b"garbage" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
            await asyncio.sleep(0.05)
            writer.write(b"zz\r\n")
            await writer.drain()
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
            await writer.drain()
            writer.close()

    async def scenario(pool, url):
        for body, error in ((b"short", Cut), (b"garbage", BadAnswer)):
            answer = await pool.request(at(pool, url), "POST", b"/", [], body)
            with pytest.raises(error):
                [chunk async for chunk in answer.chunks()]
            answer.close()

    run(handler, scenario)


def test_refused_and_unanswered_connections_fail_to_connect():
    async def scenario(pool, url):
        with pytest.raises(ConnectFailed):
            await whole(pool, "http://127.0.0.1:1")

    async def nothing(reader, writer):
        pass

    run(nothing, scenario)


def test_a_slow_reader_holds_a_bounded_buffer_and_the_upstream_waits():
    sent = 0

    async def handler(reader, writer):
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n")
        block = b"x" * 65536
        while sent < 50_000_000:
            writer.write(block)
            sent += len(block)
            await writer.drain()

    async def scenario(pool, url):
        answer = await pool.request(at(pool, url), "POST", b"/", [], b"big")
        await asyncio.sleep(1.0)  # the client reads nothing for a second
        connection = answer._connection
        held = connection._buffered
        answer.close()
        return held

    held = run(handler, scenario)
    assert held <= 2 * 256 * 1024  # the read buffer and one socket read
    assert sent < 16 * 1024 * 1024  # what the kernel's socket buffers took, not the 50 MB


def test_idle_connections_are_closed_after_the_keepalive_and_names_come_in_lower_case():
    upstream = KeptAlive(b"HTTP/1.1 200 OK\r\nX-Upstream-Name: a\r\nContent-Length: 2\r\n\r\nok")

    async def scenario(pool, url):
        answer = await pool.request(at(pool, url), "GET", b"/", [], b"")
        assert answer.headers[0] == (b"x-upstream-name", b"a")
        assert answer.header(b"content-length") == b"2"
        [chunk async for chunk in answer.chunks()]
        answer.release()
        origin = pool.origin(at(pool, url))
        assert len(origin.idle) == 1
        for _ in range(100):  # keep-alive 0.2 s, swept every 0.5 s
            if not origin.idle:
                break
            await asyncio.sleep(0.05)
        return len(origin.idle)

    assert run(upstream, scenario, keepalive=0.2) == 0
    assert len(upstream.connections) == 1


def test_an_idle_connection_past_its_keep_alive_is_not_reused_and_the_upstream_can_shorten_it():
    upstream = KeptAlive(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=3\r\nContent-Length: 2\r\n\r\nok")

    async def scenario(pool, url):
        await whole(pool, url)
        [connection] = pool.origin(at(pool, url)).idle
        keepalive = connection.keepalive
        await whole(pool, url)  # reused: within its keep-alive
        connection.expires = 0  # as if its keep-alive had passed, before the sweep saw it
        await whole(pool, url)  # a new connection
        return keepalive

    assert run(upstream, scenario) == 2.0  # a second below the upstream's 3
    assert len(upstream.connections) == 2
