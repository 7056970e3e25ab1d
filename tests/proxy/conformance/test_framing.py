"""How an answer's end is found: a body is whole only when its framing says so, nothing is
read into it that is not its own, and nothing of it is taken for something else."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from services.proxy.upstream import Cut
from tests.proxy.conformance.conftest import aiohttp_misses, call, drive, endpoint, until
from tests.proxy.conformance.servers import Scripted

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def eof_delimited(reset: bool):
    async def handler(server: Scripted, reader, writer) -> None:
        await server.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 40_000)
        await writer.drain()
        if reset:  # RST instead of FIN: the end was not meant
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    return handler


def test_a_body_ended_by_a_clean_close_is_whole(kind):
    with Scripted(eof_delimited(reset=False)) as server:
        status, _, body = drive(kind, lambda client: call(client, server.url, body=b"{}"))
    assert (status, len(body)) == (200, 40_000)


def test_a_body_ended_by_a_reset_is_a_cut(kind, request):
    aiohttp_misses(request, kind, "aiohttp 3.14 reports a body ended by a reset as whole")
    with Scripted(eof_delimited(reset=True)) as server:

        async def scenario(client):
            with pytest.raises(Cut):
                await call(client, server.url, body=b"{}")

        drive(kind, scenario)


def test_a_second_answer_in_the_same_read_is_not_merged_into_the_first(kind):
    async def two_answers(server: Scripted, reader, writer) -> None:
        while request := await server.read(reader):
            if b"twice" in request:
                writer.write(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthird")
            await writer.drain()

    with Scripted(two_answers) as server:

        async def scenario(client):
            first = await call(client, server.url, body=b"twice")
            later = await call(client, server.url, body=b"again")
            return first[2], later[2]

        assert drive(kind, scenario) == (b"ok", b"third")
    assert len(server.requests) == 2  # nothing sent twice


def test_unread_bytes_on_an_idle_connection_keep_it_from_being_reused(kind, request):
    aiohttp_misses(request, kind, "aiohttp 3.14 reuses it and reads the unread bytes as the answer")

    idle, junk_sent = threading.Event(), threading.Event()

    async def chatty(server: Scripted, reader, writer) -> None:
        while request := await server.read(reader):
            writer.write(OK)
            await writer.drain()
            if b"first" in request:
                # Once the client is done with the answer (not in the read that ends it).
                await asyncio.to_thread(idle.wait, 10)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk")  # unasked
                await writer.drain()
                junk_sent.set()

    with Scripted(chatty) as server:

        async def scenario(client):
            await call(client, server.url, body=b"first")
            idle.set()
            # The junk is in the socket while the connection is idle, and the loop, blocked
            # here, has not read it: only a look at the socket before reusing it can tell.
            assert junk_sent.wait(timeout=10)
            return await call(client, server.url, body=b"second")

        status, _, body = drive(kind, scenario)
    assert (status, body) == (200, b"ok")
    assert len(server.requests) == 2 and server.connections == 2


def test_trailer_fields_are_not_promoted_to_header_fields(kind):
    async def trailers(server: Scripted, reader, writer) -> None:
        await server.read(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
            b"5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"
        )
        await writer.drain()

    with Scripted(trailers) as server:

        async def scenario(client):
            answer = await client.request(endpoint(server.url), "GET", b"/", [], b"")
            body = b"".join([chunk async for chunk in answer.chunks()])
            names = [name for name, _ in answer.headers]
            answer.release()
            return body, names

        body, names = drive(kind, scenario)
    assert body == b"hello"
    assert b"x-checksum" not in names


def test_interim_answers_head_and_304_have_no_body_and_the_connection_stays_usable(kind):
    async def answers(server: Scripted, reader, writer) -> None:
        while request := await server.read(reader):
            if request.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b"etag" in request:
                writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
            await writer.drain()

    with Scripted(answers) as server:

        async def scenario(client):
            hinted = await call(client, server.url, body=b"{}")
            head = await call(client, server.url, "HEAD")
            etag = await call(client, server.url, "GET", headers=[(b"if-none-match", b"etag")])
            after = await call(client, server.url, body=b"{}")
            return [(status, body) for status, _, body in (hinted, head, etag, after)]

        assert drive(kind, scenario) == [(200, b"ok"), (200, b""), (304, b""), (200, b"ok")]
    assert len(server.requests) == 4


def test_connections_per_upstream_are_capped(kind):
    peak = 0
    open_now = 0
    release = asyncio.Event()

    async def slow(server: Scripted, reader, writer) -> None:
        nonlocal peak, open_now
        open_now += 1
        peak = max(peak, open_now)
        try:
            while await server.read(reader):
                if len(server.requests) < 2:
                    await release.wait()
                writer.write(OK)
                await writer.drain()
        finally:
            open_now -= 1

    with Scripted(slow) as server:

        async def scenario(client):
            tasks = [
                asyncio.create_task(call(client, server.url, body=str(i).encode()))
                for i in range(4)
            ]
            await until(lambda: len(server.requests) >= 2)
            server.loop.call_soon_threadsafe(release.set)
            return [result[2] for result in await asyncio.gather(*tasks)]

        assert drive(kind, scenario, max_connections=2) == [b"ok"] * 4
    assert peak <= 2 and server.connections <= 2
