"""The conformance suite's harness: every test runs against both upstream clients (`kind`),
on uvloop as in the proxy; aiohttp is the reference the own client is held to."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import uvloop

from services.proxy.aiohttp_client import AiohttpClient
from services.proxy.pool import Pool
from services.proxy.upstream import Answer, Endpoint, UpstreamClient

T = TypeVar("T")
KINDS = ("own", "aiohttp")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_client(kind: str, **options: Any) -> UpstreamClient:
    settings = {"connect_timeout": 3.0, "read_timeout": 5.0, "max_connections": 64, **options}
    if kind == "own":
        return Pool(**settings)
    return AiohttpClient(**settings)


def drive(kind: str, scenario: Callable[[UpstreamClient], Awaitable[T]], **options: Any) -> T:
    """Run `scenario(client)` with a new client of `kind`, within 20 s."""

    async def main() -> T:
        client = make_client(kind, **options)
        try:
            return await asyncio.wait_for(scenario(client), 20)
        finally:
            await client.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def endpoint(url: str, **options: Any) -> Endpoint:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return Endpoint(parts.scheme, parts.hostname, parts.port, **options)


async def whole(answer: Answer) -> bytes:
    """The body to its end, then the answer released."""
    body = b"".join([chunk async for chunk in answer.chunks()])
    answer.release()
    return body


async def call(
    client: UpstreamClient,
    url: str,
    method: str = "POST",
    path: bytes = b"/echo",
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    **options: Any,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    answer = await client.request(endpoint(url, **options), method, path, headers or [], body)
    return answer.status, answer.headers, await whole(answer)


async def until(condition: Callable[[], bool]) -> None:
    """Wait until `condition` (about the server, which runs in another thread) holds."""
    while not condition():  # noqa: ASYNC110 (a thread's state: no asyncio.Event can carry it)
        await asyncio.sleep(0.005)


def aiohttp_misses(request: pytest.FixtureRequest, kind: str, reason: str) -> None:
    """A case aiohttp gets wrong. Each such case is made to happen every time (what the
    upstream did is in the socket before the client's loop can notice it), so the mark is
    strict: aiohttp passing it one day fails the suite, and the table in docs/performance.md
    is to be brought up to date."""
    if kind == "aiohttp":
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
