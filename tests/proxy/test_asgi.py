"""The proxy's ASGI plumbing, driven with hand-written `receive` and `send` (no server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.proxy.asgi import (
    ClientGone,
    DisconnectWatch,
    Response,
    discard_body,
    read_body,
    request_headers,
    send_body,
    sse_error,
)
from services.proxy.errors import ProxyError, upstream_cut

Message = dict[str, Any]


def receiving(*messages: Message) -> tuple[Callable[[], Awaitable[Message]], list[Message]]:
    """A `receive` that hands out `messages`, then waits forever; and the ones taken."""
    queue = list(messages)
    taken: list[Message] = []

    async def receive() -> Message:
        if not queue:
            await asyncio.Event().wait()
        taken.append(queue.pop(0))
        return taken[-1]

    return receive, taken


def test_request_headers_find_the_key_in_any_of_its_headers():
    assert request_headers([(b"authorization", b"Bearer  sk-1 ")]) == ("sk-1", "", None)
    assert request_headers([(b"x-api-key", b"sk-2"), (b"content-length", b"12")]) == (
        "sk-2",
        "",
        12,
    )
    both = [(b"authorization", b"Bearer sk-1"), (b"api-key", b"sk-2")]
    assert request_headers(both)[0] == "sk-1"  # Bearer first, as the original
    assert request_headers([(b"authorization", b"Basic x"), (b"content-type", b"A/JSON")]) == (
        None,
        "a/json",
        None,
    )


def test_read_body_joins_the_parts_of_a_body():
    receive, _ = receiving(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    )
    assert asyncio.run(read_body(receive, 10, None)) == b"abcd"


def test_a_client_that_leaves_before_its_body_is_sent_is_gone():
    receive, _ = receiving(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.disconnect"},
    )
    with pytest.raises(ClientGone):
        asyncio.run(read_body(receive, 10, None))


def test_a_body_over_the_limit_is_413_declared_or_not():
    receive, taken = receiving({"type": "http.request", "body": b"x" * 11})
    with pytest.raises(ProxyError) as declared:
        asyncio.run(read_body(receive, 10, 11))
    assert declared.value.status == 413 and not taken  # refused before reading
    receive, _ = receiving(
        {"type": "http.request", "body": b"x" * 6, "more_body": True},
        {"type": "http.request", "body": b"x" * 5, "more_body": False},
    )
    with pytest.raises(ProxyError) as chunked:
        asyncio.run(read_body(receive, 10, None))
    assert chunked.value.status == 413


def test_the_disconnect_watch_cancels_the_request_when_the_client_leaves():
    async def scenario() -> tuple[bool, list[Message]]:
        leave = asyncio.Event()
        taken: list[Message] = []

        async def receive() -> Message:
            if not taken:  # an empty trailing body message first: not a disconnect
                taken.append({"type": "http.request", "body": b"", "more_body": False})
            else:
                await leave.wait()
                taken.append({"type": "http.disconnect"})
            return taken[-1]

        async def request() -> None:
            watch = DisconnectWatch(receive, arm_after=0)
            try:
                await asyncio.sleep(0)  # armed
                leave.set()
                await asyncio.Event().wait()  # an answer that never comes
            finally:
                watch.close()
                outcome.append(watch.gone)

        outcome: list[bool] = []
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(request(), 10)
        return outcome[0], taken

    gone, taken = asyncio.run(scenario())
    assert gone
    assert [m["type"] for m in taken] == ["http.request", "http.disconnect"]


def test_the_disconnect_watch_does_not_listen_for_a_quick_answer():
    async def scenario() -> list[Message]:
        receive, taken = receiving({"type": "http.disconnect"})
        watch = DisconnectWatch(receive, arm_after=60)
        await asyncio.sleep(0)
        watch.close()
        await asyncio.sleep(0)
        return taken

    assert asyncio.run(scenario()) == []  # never asked: a client that stays costs no task


def test_response_knows_when_the_answer_started_and_own_answers_are_whole():
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def scenario() -> bool:
        response = Response(send)
        before = response.started
        size = await send_body(response, 404, b'{"x":1}', "rid", [(b"retry-after", b"1")])
        assert size == 7
        return not before and response.started

    assert asyncio.run(scenario())
    start, body = sent
    assert start["status"] == 404
    assert dict(start["headers"]) == {
        b"content-type": b"application/json",
        b"content-length": b"7",
        b"x-request-id": b"rid",
        b"retry-after": b"1",
    }
    assert body == {"type": "http.response.body", "body": b'{"x":1}', "more_body": False}


def test_an_error_in_a_stream_is_one_sse_event():
    event = sse_error(upstream_cut())
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["code"] == "upstream_cut"


def test_discard_body_reads_to_the_end_or_the_limit_or_the_clients_leaving():
    parts = [{"type": "http.request", "body": b"x" * 6, "more_body": True}] * 3
    end = {"type": "http.request", "body": b"", "more_body": False}
    receive, taken = receiving(*parts, end)
    asyncio.run(discard_body(receive, 100))
    assert taken[-1] == end
    receive, taken = receiving(*parts, end)
    asyncio.run(discard_body(receive, 10))  # past the limit after the second part: not waited for
    assert len(taken) == 2
    receive, taken = receiving(parts[0], {"type": "http.disconnect"}, end)
    asyncio.run(discard_body(receive, 100))
    assert taken[-1]["type"] == "http.disconnect"
