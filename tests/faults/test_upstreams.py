"""Upstreams that misbehave, against the proxy in a real uvicorn on loopback.

For each fault: the client gets a timely, well-formed answer (the upstream's own error, a 502 or
504 in OpenAI's shape, or a clean end of stream), a client of a healthy upstream meanwhile is
not slowed down, the analytics row says what happened, and the upstream's health follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.apikeys import ApiKey
from tests.conftest import RunningProxy, eventually
from tests.faults.measure import peak_rss, reset_peak, rss
from tests.faults.servers import (
    SSE_HEAD,
    Reply,
    Request,
    completion,
    fault_server,
    healthy,
    refused_url,
    send_json,
    sse_events,
)

TIMEOUT = httpx.Timeout(15.0)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def row_of(running: RunningProxy, response: httpx.Response) -> dict[str, Any]:
    request_id = response.headers["x-request-id"]
    return eventually(
        lambda: next((r for r in running.rows() if r["request_id"] == request_id), None)
    )


def post(client: httpx.Client, model: str = "model-f", **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": [], **body})


@contextlib.contextmanager
def bystander(running: RunningProxy, key: ApiKey) -> Iterator[list[tuple[int, float]]]:
    """A client of the healthy upstream ("model-a") sending requests the whole time; yields the
    (status, seconds) of each."""
    results: list[tuple[int, float]] = []
    stop = threading.Event()

    def run() -> None:
        with running.client(key) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                status = post(client, "model-a").status_code
                results.append((status, time.monotonic() - t0))
                time.sleep(0.02)

    thread = threading.Thread(target=run, name="bystander")
    thread.start()
    try:
        yield results
        eventually(lambda: len(results) >= 5)
    finally:
        stop.set()
        thread.join(10)
    assert len(results) >= 5, results
    assert {status for status, _ in results} == {200}, results
    # Not held up by the fault: a bystander that waited for it (or for an event loop it
    # blocked) would take the fault's seconds; under a loaded machine, a normal answer takes
    # well under a second.
    assert max(seconds for _, seconds in results) < 3.0, results


# Behaviours -------------------------------------------------------------------------------


async def silent(request: Request, reply: Reply) -> None:
    await asyncio.sleep(3600)


async def silent_mid_stream(request: Request, reply: Reply) -> None:
    await reply.head(200, SSE_HEAD)
    await reply.write(sse_events(2, usage=False).split(b"data: [DONE]")[0])
    await asyncio.sleep(3600)


# Tests ------------------------------------------------------------------------------------


def test_refused_connection_is_a_prompt_502_recorded_and_marked_down(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    running = proxy(refused_url(), a, models_refresh_seconds=0.3, upstream_connect_timeout=30)
    running.runtime.catalog.states[0].model_ids = frozenset({"model-f"})  # as before it went away
    with bystander(running, api_key), running.client(api_key) as client:
        t0 = time.monotonic()
        r = post(client)
        elapsed = time.monotonic() - t0
    assert r.status_code == 502 and error_of(r)["code"] == "upstream_unreachable"
    assert elapsed < 10  # at once, not after the connect timeout (30 s)
    row = row_of(running, r)
    assert (row["status"], row["error"], row["end_ms"]) == (502, "upstream_unreachable", None)
    assert running.runtime.catalog.states[0].healthy is False
    assert running.runtime.catalog.states[1].healthy is True


def test_upstream_that_accepts_and_never_answers_is_504_and_goes_unhealthy(
    upstreams, proxy, api_key
):
    a = upstreams("a", ["model-a"])
    with fault_server(silent, models_too=True) as f:
        running = proxy(
            f.url,
            a,
            upstream_read_timeout=1.0,
            models_timeout_seconds=0.5,
            models_refresh_seconds=0.5,
        )
        running.runtime.catalog.states[0].model_ids = frozenset({"model-f"})
        with bystander(running, api_key), running.client(api_key) as client:
            t0 = time.monotonic()
            r = post(client)
            elapsed = time.monotonic() - t0
        assert r.status_code == 504 and error_of(r)["code"] == "upstream_timeout"
        assert 0.9 < elapsed < 8  # the read timeout (1 s), not the client's (15 s)
        row = row_of(running, r)
        assert (row["status"], row["error"], row["end_ms"]) == (504, "upstream_timeout", None)
        assert eventually(lambda: running.runtime.catalog.states[0].healthy is False)


def test_stream_that_goes_silent_ends_cleanly_with_an_error_event(upstreams, proxy, api_key):
    a = upstreams("a", ["model-a"])
    with fault_server(silent_mid_stream) as f:
        running = proxy(f.url, a, upstream_read_timeout=1.0)
        with bystander(running, api_key), running.client(api_key) as client:
            t0 = time.monotonic()
            r = post(client, stream=True)
            elapsed = time.monotonic() - t0
    assert r.status_code == 200 and 0.9 < elapsed < 8  # the read timeout, not the client's
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert len(events) == 3 and events[-1]["error"]["code"] == "upstream_cut"
    assert r.text.endswith("\n\n")
    row = row_of(running, r)
    assert row["status"] == 200 and row["stream"] == 1
    assert row["error"].startswith("upstream cut") and row["end_ms"] is None


def trickle(body: bytes, content_type: str, delay: float) -> Any:
    async def behaviour(request: Request, reply: Reply) -> None:
        await reply.head(200, {"Content-Type": content_type, "Connection": "close"})
        for i in range(len(body)):
            await reply.write(body[i : i + 1])
            await asyncio.sleep(delay)

    return behaviour


def test_answer_sent_byte_by_byte_arrives_whole_with_its_usage(upstreams, proxy, api_key):
    body = json.dumps(completion()).encode()
    a = upstreams("a", ["model-a"])
    with fault_server(trickle(body, "application/json", 0.004)) as f:
        running = proxy(f.url, a, upstream_read_timeout=1.0)
        with bystander(running, api_key), running.client(api_key) as client:
            r = post(client)
    assert r.status_code == 200 and r.content == body
    row = row_of(running, r)
    assert (row["status"], row["error"], row["bytes_out"]) == (200, None, len(body))
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 3)
    assert row["end_ms"] is not None


def test_stream_sent_byte_by_byte_is_relayed_as_it_comes(upstreams, proxy, api_key):
    body = sse_events(3)
    a = upstreams("a", ["model-a"])
    with fault_server(trickle(body, "text/event-stream", 0.002)) as f:
        running = proxy(f.url, a, upstream_read_timeout=1.0)
        with bystander(running, api_key), running.client(api_key) as client:
            pieces = []
            with client.stream("POST", "/v1/chat/completions", json={"model": "model-f"}) as r:
                pieces = list(r.iter_raw())
    assert b"".join(pieces) == body
    assert len(pieces) > 20  # not held back until the end
    row = row_of(running, r)
    assert (row["status"], row["stream"], row["error"]) == (200, 1, None)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 3)


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def cut(head: dict[str, str], first: bytes) -> Any:
    async def behaviour(request: Request, reply: Reply) -> None:
        await reply.head(200, head)
        await reply.write(first)
        await asyncio.sleep(0.05)
        reply.abort()

    return behaviour


def test_body_cut_short_is_not_passed_off_as_complete(upstreams, proxy, api_key):
    body = json.dumps(completion()).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    a = upstreams("a", ["model-a"])
    with fault_server(cut(head, body[:40])) as f:
        running = proxy(f.url, a, upstream_read_timeout=60)
        with bystander(running, api_key), running.client(api_key) as client:
            received = bytearray()
            t0 = time.monotonic()
            try:
                with client.stream("POST", "/v1/chat/completions", json={"model": "model-f"}) as r:
                    for piece in r.iter_raw():
                        received += piece
            except httpx.RemoteProtocolError:
                pass  # the truncation, seen as such
            else:
                raise AssertionError(f"a cut body ended cleanly: {bytes(received)!r}")
            assert time.monotonic() - t0 < 20  # seen as cut, not waited out (60 s)
    assert bytes(received) == body[:40]
    row = row_of(running, r)
    assert row["error"].startswith("upstream cut") and row["end_ms"] is None


def test_stream_cut_in_the_middle_of_a_line_ends_with_a_well_formed_error_event(
    upstreams, proxy, api_key
):
    events = sse_events(4)
    partial = events[: events.index(b"data:", 60) + 20]  # an event and part of the next
    head = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}
    a = upstreams("a", ["model-a"])
    with fault_server(cut(head, chunked(partial))) as f:
        running = proxy(f.url, a)
        with bystander(running, api_key), running.client(api_key) as client:
            r = post(client, stream=True)
    # An SSE parser sees the whole events, perhaps the broken one, then the error as an
    # event of its own.
    assert r.status_code == 200
    blocks = r.text.split("\n\n")
    *whole, broken = partial.decode().split("\n\n")
    assert blocks[: len(whole)] == whole and blocks[-1] == ""
    assert blocks[len(whole) : -2] in ([], [broken])
    last = json.loads(blocks[-2].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_cut"
    row = row_of(running, r)
    assert row["error"].startswith("upstream cut") and row["end_ms"] is None


MALFORMED = (
    b"data: {not json\n\n"
    b"data: \x00\xff\xfe binary\n\n"
    b"event: nonsense\nid: 1\nretry: x\n\n"
    b": a comment\n\n"
    b"no field at all\n\n"
    b'data: {"usage": {"prompt_tokens": "many"}}\n\n'
    b'data: {"choices": [], "usage": null}\n\n'
    + b"data: "
    + b"x" * (3 * 1024 * 1024)
    + b"\n\n"  # one line of 3 MB
    + b"data: "
    + b"y" * (1024 * 1024)  # and a last one that never ends
)


def test_malformed_stream_is_relayed_untouched_and_ends_cleanly(upstreams, proxy, api_key):
    async def behaviour(request: Request, reply: Reply) -> None:
        await reply.head(200, SSE_HEAD)
        for i in range(0, len(MALFORMED), 1000):
            await reply.write(MALFORMED[i : i + 1000])

    a = upstreams("a", ["model-a"])
    with fault_server(behaviour) as f:
        running = proxy(f.url, a, upstream_read_timeout=60)
        with bystander(running, api_key), running.client(api_key) as client:
            t0 = time.monotonic()
            r = post(client, stream=True, stream_options={"include_usage": True})
            elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.content == MALFORMED
    assert elapsed < 20  # ended with the upstream's close, not waited out (60 s)
    row = row_of(running, r)
    assert (row["status"], row["stream"], row["error"]) == (200, 1, None)
    assert row["bytes_out"] == len(MALFORMED) and row["end_ms"] is not None
    assert row["prompt_tokens"] is None


@pytest.mark.parametrize("usage", [True, False], ids=["usage asked", "usage not asked"])
def test_endless_line_without_a_newline_is_relayed_in_linear_time(upstreams, proxy, api_key, usage):
    """A stream that never ends its line: usage metering (and taking back the usage the proxy
    asked for) must neither keep it all nor copy it again for every chunk."""
    size, block = 64 * 1024 * 1024, b"z" * 65536

    async def behaviour(request: Request, reply: Reply) -> None:
        await reply.head(200, SSE_HEAD)
        await reply.write(b"data: ")
        for _ in range(size // len(block)):
            await reply.write(block)

    a = upstreams("a", ["model-a"])
    with fault_server(behaviour) as f:
        running = proxy(f.url, a)
        with running.client(api_key) as client:
            reset_peak()  # the proxy runs in this process: its peak memory is ours
            before = rss()
            t0 = time.monotonic()
            received = 0
            with client.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "model-f",
                    "stream": True,
                    "stream_options": {"include_usage": usage},
                },
            ) as r:
                for piece in r.iter_raw():
                    received += len(piece)
            elapsed = time.monotonic() - t0
            grew = peak_rss() - before
    assert received == size + 6
    # Copying the line again for every chunk is quadratic: minutes, where one pass takes a few
    # seconds on a loaded machine (the memory bound below catches keeping it all).
    assert elapsed < 30.0, f"{elapsed:.1f}s for 64 MB"
    assert grew < 24 * 1024 * 1024, f"{grew / 2**20:.0f} MB held for a 64 MB line"


def test_huge_body_streams_through_without_being_held(upstreams, proxy, api_key):
    size, block = 128 * 1024 * 1024, b" " * 65536

    async def behaviour(request: Request, reply: Reply) -> None:
        head = {"Content-Type": "application/json", "Content-Length": str(size + 2)}
        await reply.head(200, head)
        await reply.write(b"{")
        for _ in range(size // len(block)):
            await reply.write(block)
        await reply.write(b"}")

    a = upstreams("a", ["model-a"])
    with fault_server(behaviour) as f:
        running = proxy(f.url, a)
        with bystander(running, api_key), running.client(api_key) as client:
            reset_peak()
            before = rss()
            received = 0
            with client.stream("POST", "/v1/chat/completions", json={"model": "model-f"}) as r:
                for piece in r.iter_raw():
                    received += len(piece)
            grew = peak_rss() - before
    assert r.status_code == 200 and received == size + 2
    # Only what usage metering keeps of a JSON body (8 MB at most) may stay in memory.
    assert grew < 32 * 1024 * 1024, f"{grew / 2**20:.0f} MB held for a 128 MB body"
    row = row_of(running, r)
    assert (row["status"], row["error"], row["bytes_out"]) == (200, None, size + 2)


def answer(status: int, body: bytes, content_type: str, **headers: str) -> Any:
    async def behaviour(request: Request, reply: Reply) -> None:
        head = {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}
        await reply.head(status, head)
        await reply.write(body)

    return behaviour


def test_upstream_errors_pass_through_with_their_own_bodies(upstreams, proxy, api_key):
    own_429 = json.dumps({"error": {"message": "slow down", "type": "rate_limit", "x": 1}})
    html_500 = b"<html><body>Internal Server Error</body></html>"
    cases = [
        (answer(429, own_429.encode(), "application/json", **{"Retry-After": "7"}), 429),
        (answer(500, html_500, "text/html"), 500),
        (answer(503, b"", "text/plain"), 503),
    ]
    a = upstreams("a", ["model-a"])
    for behaviour, status in cases:
        with fault_server(behaviour) as f:
            running = proxy(f.url, a, models_refresh_seconds=0.3)
            with bystander(running, api_key), running.client(api_key) as client:
                r = post(client)
                body = f.requests[-1]  # what the upstream got
            upstream_body = (
                own_429.encode() if status == 429 else html_500 if status == 500 else b""
            )
            assert r.status_code == status and r.content == upstream_body
            assert json.loads(body.body)["model"] == "model-f"
            if status == 429:
                assert r.headers["retry-after"] == "7"
            row = row_of(running, r)
            assert (row["status"], row["end_ms"], row["upstream"]) == (status, None, f.url)
            # It answered: it is up, and stays so.
            assert running.runtime.catalog.states[0].healthy is True


RESTARTS = 4


def test_flapping_upstream_drops_only_requests_racing_a_restart_and_its_health_follows(
    upstreams, proxy, api_key
):
    """An upstream restarting again and again: every request is answered, by either upstream,
    or (when a restart closes a kept-alive connection just as a POST goes out on it, a race no
    client can tell from a crash mid-request) refused with a 502 saying it was not sent again."""
    b = upstreams("b", ["shared"])
    with fault_server(healthy, models=["shared"]) as f:
        running = proxy(f.url, b, models_refresh_seconds=0.2)
        state = running.runtime.catalog.states[0]
        eventually(lambda: "shared" in state.model_ids)
        results: list[tuple[int, str, str]] = []
        stop = threading.Event()

        def client_loop() -> None:
            with running.client(api_key) as client:
                while not stop.is_set():
                    r = post(client, "shared")
                    code = "" if r.status_code == 200 else error_of(r)["code"]
                    results.append((r.status_code, r.headers["x-request-id"], code))

        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:

            def more_served() -> None:
                served = len(results)
                eventually(lambda: len(results) >= served + 8)

            for _ in range(RESTARTS):
                more_served()
                f.down(graceful=True)
                eventually(lambda: state.healthy is False)
                more_served()
                f.up()
                eventually(lambda: state.healthy is True)
            more_served()
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    assert len(results) > 40
    failed = [result for result in results if result[0] != 200]
    assert {(status, code) for status, _, code in failed} <= {(502, "upstream_dropped")}
    # A restart closes each client's kept-alive connection once: at most the one request going
    # out on it races the close.
    assert len(failed) <= RESTARTS * len(threads), f"{len(failed)} of {len(results)} failed"
    ours = {request_id for _, request_id, _ in results}
    rows = eventually(
        lambda: (rows := running.rows()) and ours <= {r["request_id"] for r in rows} and rows
    )
    served = [r for r in rows if r["request_id"] in ours]
    assert len(served) == len(results)
    assert {r["status"] for r in served} <= {200, 502}
    assert {r["upstream"] for r in served} == {f.url, b.url + "/v1"}  # both took a share


def test_kept_alive_connection_dropped_as_a_request_goes_out(proxy, api_key):
    """An upstream closes a kept-alive connection just as the proxy sends the next request on it
    (a restart, its keep-alive timeout running out): the upstream may have run a POST, so it is
    not sent again (a 502 says so); a GET is sent again on a new connection."""
    # The writers themselves, not their id(): a closed connection's writer, freed, left its id
    # to the next connection's, whose first request was then taken for a second one.
    answered: set[object] = set()

    async def second_request_closes(request: Request, reply: Reply) -> bool:
        if reply.writer in answered:
            reply.abort()  # read the request, closed without a word
            return False
        answered.add(reply.writer)
        await send_json(reply, 200, completion(), keep_alive=True)
        return True

    with fault_server(second_request_closes) as f:
        running = proxy(f.url)
        with running.client(api_key) as client:
            posted = [post(client) for _ in range(4)]
            got = [client.get("/v1/files").status_code for _ in range(4)]
        posts = [r for r in f.requests if r.method == "POST"]
        gets = [r for r in f.requests if r.method == "GET" and r.path.endswith("/files")]
    assert [r.status_code for r in posted] == [200, 502, 200, 502]
    assert error_of(posted[1])["code"] == "upstream_dropped"
    assert "127.0.0.1" not in error_of(posted[1])["message"]  # named by its label
    assert len(posts) == 4  # each once
    assert got == [200] * 4
    assert 4 < len(gets) <= 8  # some went twice, none more


def test_upstream_that_always_closes_without_answering_gets_a_post_once_then_502(proxy, api_key):
    async def closes(request: Request, reply: Reply) -> None:
        reply.abort()

    with fault_server(closes) as f:
        running = proxy(f.url)
        with running.client(api_key) as client:
            r = post(client)
        posts = [r for r in f.requests if r.method == "POST"]
    assert r.status_code == 502 and error_of(r)["code"] == "upstream_dropped"
    assert len(posts) == 1
    row = row_of(running, r)
    assert (row["status"], row["error"], row["end_ms"]) == (502, "upstream_dropped", None)
