"""Streaming load: SSE chunks per second, time to first chunk, and many slow streams at once.

A stream counts as complete when it ends with `data: [DONE]`; anything else (a status other than
200, a cut, a timeout) is an error. Events are counted by their `\\n\\n` terminators across
reads, so it does not matter how the proxies in between regroup the bytes. Every load is bounded
by a deadline or a number of streams, and every stream by a timeout.

The throughput and paced loads use aiohttp. The crowd (1,000 slow streams) reads each stream
with a protocol of its own on httptools, as the mock upstream writes them: through aiohttp the
client alone spent 2.2 s of CPU on 50,000 events (44 µs each), a third of what the two cores had
while the target was measured, and its own lateness was read as the target's.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httptools
import uvloop

STREAM_TIMEOUT = 60.0
DONE = b"data: [DONE]\n\n"


class BadStream(Exception):
    """A stream that did not answer 200 or did not end with [DONE]."""


@dataclass(frozen=True, slots=True)
class Throughput:
    concurrency: int
    streams: int  # complete ones
    chunks: int  # their events, [DONE] not counted
    seconds: float
    errors: int
    chunks_per_s: float


@dataclass(frozen=True, slots=True)
class Paced:
    pace_ms: int
    streams: int
    errors: int
    ttfb_p50_ms: float | None  # None: no stream completed
    ttfb_p99_ms: float | None
    duration_p50_ms: float | None  # request sent to [DONE] received


@dataclass(frozen=True, slots=True)
class Crowd:
    """Many slow streams open at once, as LLM traffic is: how late their chunks come."""

    concurrency: int
    pace_ms: int
    streams: int  # complete ones
    chunks: int
    errors: int
    delay_p50_ms: float | None  # each gap between chunks, less the pace
    delay_p99_ms: float | None
    rss_open_kib: int  # the workers' RSS with every stream open (0: not sampled)


@dataclass(frozen=True, slots=True)
class _Stream:
    ttfb: float
    duration: float
    chunks: int


def stream_body(base: str, pace_ms: int = 0) -> str:
    """`base` (a chat completion request as JSON) asking for a stream, paced if `pace_ms`."""
    document = json.loads(base)
    document["stream"] = True
    if pace_ms:
        document["pace_ms"] = pace_ms
    return json.dumps(document, separators=(",", ":"))


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _session(concurrency: int, headers: Mapping[str, str]) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
        timeout=aiohttp.ClientTimeout(total=STREAM_TIMEOUT),
        headers={**headers, "Content-Type": "application/json"},
        auto_decompress=False,
    )


class _Events:
    """Counts a stream's events across reads, and times each one's arrival."""

    __slots__ = ("count", "last", "tail")

    def __init__(self) -> None:
        self.count = 0
        self.last: float | None = None  # when the latest event arrived
        self.tail = b""  # the last bytes read, to see a terminator split across reads

    def feed(self, data: bytes) -> int:
        """The events `data` ends (0: none)."""
        # One byte of the previous read is enough to see a terminator split across reads.
        found = (self.tail[-1:] + data).count(b"\n\n")
        self.tail = (self.tail + data)[-len(DONE) :]
        self.count += found
        return found


async def _stream(session: aiohttp.ClientSession, url: str, body: bytes) -> _Stream:
    started = time.perf_counter()
    first: float | None = None
    events = _Events()
    async with session.post(url, data=body) as response:
        if response.status != 200:
            raise BadStream(f"HTTP {response.status}")
        async for data in response.content.iter_any():
            if first is None:
                first = time.perf_counter()
            events.feed(data)
    if first is None or events.tail != DONE:
        raise BadStream("the stream did not end with [DONE]")
    return _Stream(first - started, time.perf_counter() - started, events.count - 1)


async def _throughput(
    url: str,
    headers: Mapping[str, str],
    body: str,
    concurrency: int,
    seconds: float,
    max_streams: int,
) -> Throughput:
    payload = body.encode()
    deadline = time.monotonic() + seconds
    done: list[_Stream] = []
    errors = 0
    budget = max_streams

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, budget
        while time.monotonic() < deadline and budget > 0:
            budget -= 1
            try:
                done.append(await _stream(session, url, payload))
            except (aiohttp.ClientError, TimeoutError, BadStream):
                errors += 1
                await asyncio.sleep(0.01)  # a refusing target must not be hammered in a loop

    started = time.perf_counter()
    async with _session(concurrency, headers) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    chunks = sum(s.chunks for s in done)
    return Throughput(concurrency, len(done), chunks, elapsed, errors, chunks / elapsed)


async def _paced(
    url: str,
    headers: Mapping[str, str],
    body: str,
    concurrency: int,
    rounds: int,
    pace_ms: int,
) -> Paced:
    payload = stream_body(body, pace_ms).encode()
    done: list[_Stream] = []
    errors = 0

    async def staggered(session: aiohttp.ClientSession, index: int) -> _Stream:
        # Spread the starts over one pace interval, as independent clients would be: started
        # all at once, the streams would measure the client's own queue more than the target.
        await asyncio.sleep(index * pace_ms / 1000 / concurrency)
        return await _stream(session, url, payload)

    async with _session(concurrency, headers) as session:
        for _ in range(rounds):
            results = await asyncio.gather(
                *(staggered(session, index) for index in range(concurrency)),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, _Stream):
                    done.append(result)
                elif isinstance(result, aiohttp.ClientError | TimeoutError | BadStream):
                    errors += 1
                else:
                    raise result
    ttfb = [s.ttfb * 1000 for s in done]
    return Paced(
        pace_ms,
        len(done),
        errors,
        percentile(ttfb, 50),
        percentile(ttfb, 99),
        percentile([s.duration * 1000 for s in done], 50),
    )


class _CrowdStream(asyncio.Protocol):
    """One stream of the crowd, on a connection of its own: the request written once, the
    answer read with httptools, the gap before each event measured."""

    def __init__(
        self, request: bytes, pace: float, delays: list[float], opened: Callable[[], None]
    ) -> None:
        self.request, self.pace, self.delays, self.opened = request, pace, delays, opened
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.events = _Events()
        self.status = 0
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(BadStream(f"malformed answer: {exc}"))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        events = self.events
        last = events.last
        if not events.feed(body):
            return
        if last is None:
            self.opened()
        else:
            self.delays.append(max(0.0, now - last - self.pace) * 1000)
        events.last = now

    def on_message_complete(self) -> None:
        if self.status != 200:
            self._end(BadStream(f"HTTP {self.status}"))
        elif self.events.tail != DONE:
            self._end(BadStream("the stream did not end with [DONE]"))
        else:
            self._end(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(BadStream(f"closed before the end of the stream ({exc})"))

    def close(self) -> None:
        self._end(BadStream("closed by the client"))

    def _end(self, error: BadStream | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(self.events.count - 1)  # [DONE] is no chunk
            else:
                self.done.set_exception(error)
        if self._transport is not None:
            self._transport.close()


def _request(url: str, headers: Mapping[str, str], body: bytes) -> tuple[str, int, bytes]:
    """Host, port and the bytes of a POST of `body` to `url`, one request per connection."""
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname and parts.port, url
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return parts.hostname, parts.port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _crowd(
    url: str,
    headers: Mapping[str, str],
    body: str,
    concurrency: int,
    pace_ms: int,
    sample: Callable[[], int],
) -> Crowd:
    host, port, request = _request(url, headers, stream_body(body, pace_ms).encode())
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    opened = 0
    all_open = asyncio.Event()
    errors = 0
    done: list[int] = []

    def one_opened() -> None:
        nonlocal opened
        opened += 1
        if opened == concurrency:
            all_open.set()

    async def one(index: int) -> None:
        nonlocal errors
        # Starts spread over one second, as independent clients would be.
        await asyncio.sleep(index / concurrency)
        stream: _CrowdStream | None = None
        try:
            async with asyncio.timeout(STREAM_TIMEOUT):
                _, stream = await loop.create_connection(
                    lambda: _CrowdStream(request, pace_ms / 1000, delays, one_opened), host, port
                )
                done.append(await stream.done)
        except (OSError, TimeoutError, BadStream):
            errors += 1
            if stream is not None:
                stream.close()  # a timeout left it open

    rss = 0

    async def sampler() -> None:
        nonlocal rss
        await all_open.wait()
        rss = sample()

    watch = asyncio.create_task(sampler())
    await asyncio.gather(*(one(i) for i in range(concurrency)))
    watch.cancel()
    return Crowd(
        concurrency,
        pace_ms,
        len(done),
        sum(done),
        errors,
        percentile(delays, 50),
        percentile(delays, 99),
        rss,
    )


def crowd(
    url: str,
    headers: Mapping[str, str],
    body: str,
    *,
    concurrency: int,
    pace_ms: int,
    sample: Callable[[], int],
) -> Crowd:
    """`concurrency` streams at once, each a chunk every `pace_ms`; `sample()` (the workers'
    RSS) is taken once every stream is open."""
    return uvloop.run(_crowd(url, headers, body, concurrency, pace_ms, sample))


def throughput(
    url: str,
    headers: Mapping[str, str],
    body: str,
    *,
    concurrency: int,
    seconds: float,
    max_streams: int = 1_000_000,
) -> Throughput:
    """Run `concurrency` streams back to back for `seconds` (at most `max_streams` in all)."""
    return uvloop.run(
        _throughput(url, headers, stream_body(body), concurrency, seconds, max_streams)
    )


def paced(
    url: str,
    headers: Mapping[str, str],
    body: str,
    *,
    concurrency: int,
    rounds: int,
    pace_ms: int,
) -> Paced:
    """Run `rounds` of `concurrency` simultaneous streams paced at `pace_ms`."""
    return uvloop.run(_paced(url, headers, body, concurrency, rounds, pace_ms))
