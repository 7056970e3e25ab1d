"""A request is sent again only when the upstream cannot have run it; never after a malformed
answer; each case against both clients."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services.proxy.upstream import BadAnswer, Dropped
from tests.proxy.conformance.conftest import aiohttp_misses, call, drive
from tests.proxy.conformance.servers import Scripted, server_of

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def closes_after_reading(server: Scripted, reader, writer) -> None:
    await server.read(reader)  # the whole request, then the connection closes: a crash


def test_a_post_whose_connection_closes_mid_request_is_sent_once(kind):
    with Scripted(closes_after_reading) as server:

        async def scenario(client):
            with pytest.raises(Dropped):
                await call(client, server.url, body=b'{"prompt": "x"}')

        drive(kind, scenario)
    assert len(server.requests) == 1


def test_a_post_on_a_fresh_connection_reset_mid_request_is_sent_once(kind):
    async def resets(server: Scripted, reader, writer) -> None:
        await server.read(reader)
        writer.transport.abort()  # a reset, as a load balancer gives

    with Scripted(resets) as server:

        async def scenario(client):
            with pytest.raises(Dropped):
                await call(client, server.url, body=b"{}")

        drive(kind, scenario)
    assert len(server.requests) == 1


def test_a_gunicorn_worker_killed_mid_request_runs_the_post_once(kind, tmp_path: Path):
    with server_of("gunicorn", tmp_path) as url:

        async def scenario(client):
            with pytest.raises(Dropped):
                await call(client, url, path=b"/die", body=b"{}", headers=[(b"x-test-id", b"t1")])

        drive(kind, scenario)
    assert (tmp_path / "runs.log").read_text().split() == ["t1"]


BAD_HEADS = {
    "content-length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 5\r\n\r\nhello",
}


# aiohttp's parser reads these two leniently; ours refuses them. Either way, sent once.
LENIENT_IN_AIOHTTP = {"bare-lf", "obs-fold"}


@pytest.mark.parametrize("case", list(BAD_HEADS))
def test_a_malformed_head_is_a_bad_answer_and_the_request_is_sent_once(kind, case):
    async def answers(server: Scripted, reader, writer) -> None:
        while await server.read(reader):
            writer.write(BAD_HEADS[case])
            await writer.drain()

    with Scripted(answers) as server:

        async def scenario(client):
            if kind == "aiohttp" and case in LENIENT_IN_AIOHTTP:
                return await call(client, server.url, body=b"{}")
            with pytest.raises(BadAnswer):
                await call(client, server.url, body=b"{}")
            return None

        drive(kind, scenario)
    assert len(server.requests) == 1


def kept_alive_then_dropped():
    """Answers the first request of each connection and keeps it alive; takes the second and
    closes without a word (an upstream restarting, or its idle timeout just running out)."""

    async def handler(server: Scripted, reader, writer) -> None:
        await server.read(reader)
        writer.write(OK)
        await writer.drain()
        await server.read(reader)

    return handler


def test_a_post_on_a_reused_connection_that_got_nothing_back_is_not_sent_again(kind):
    with Scripted(kept_alive_then_dropped()) as server:

        async def scenario(client):
            first = await call(client, server.url, body=b"1")
            with pytest.raises(Dropped):
                await call(client, server.url, body=b"2")
            return first

        assert drive(kind, scenario)[2] == b"ok"
    assert len(server.requests) == 2  # the second once


def test_a_get_on_a_reused_connection_that_got_nothing_back_is_sent_again(kind):
    with Scripted(kept_alive_then_dropped()) as server:

        async def scenario(client):
            first = await call(client, server.url, "GET")
            second = await call(client, server.url, "GET")
            return first[2], second[2]

        assert drive(kind, scenario) == (b"ok", b"ok")
    assert len(server.requests) == 3  # the second went twice: a GET has no effect to repeat
    assert server.connections == 2


def test_an_idle_connection_the_upstream_closed_is_not_used(kind, request):
    aiohttp_misses(request, kind, "aiohttp 3.14 may write on it, fail, and not send again")
    closed = threading.Event()

    async def closes_when_idle(server: Scripted, reader, writer) -> None:
        await server.read(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()
        await writer.wait_closed()  # its FIN is sent
        closed.set()

    with Scripted(closes_when_idle) as server:

        async def scenario(client):
            await call(client, server.url, body=b"1")
            # Closed while idle, and the loop, blocked here, has not read the close: only a
            # look at the socket before reusing it can tell.
            assert closed.wait(timeout=10)
            return await call(client, server.url, body=b"2")

        assert drive(kind, scenario)[2] == b"ok"
    assert len(server.requests) == 2


def test_a_post_whose_body_could_not_be_written_is_sent_again_once(kind, request):
    aiohttp_misses(request, kind, "aiohttp 3.14 does not send again when its write fails")
    body = b"x" * (8 << 20)  # more than the sockets hold: the write is still going when cut

    async def refuses_the_first(server: Scripted, reader, writer) -> None:
        if server.connections == 1:  # reads the head only, then resets: the body never arrived
            await reader.readuntil(b"\r\n\r\n")
            writer.transport.abort()
            return
        while await server.read(reader):
            writer.write(OK)
            await writer.drain()

    with Scripted(refuses_the_first) as server:

        async def scenario(client):
            return await call(client, server.url, body=body)

        status, _, answer = drive(kind, scenario)
    assert (status, answer) == (200, b"ok")
    assert server.connections == 2 and len(server.requests) == 1  # run once, whole
