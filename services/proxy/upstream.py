"""The upstream client seam: what the proxy needs from an HTTP client, and its failures.

Two implementations sit behind `UpstreamClient`: the proxy's own (`pool.py`) and aiohttp's
(`aiohttp_client.py`); `UPSTREAM_CLIENT` picks one (`clients.py` builds it). Both take an
`Endpoint` (where an upstream is and how to reach it: TLS, proxy, keep-alive), send a whole
body, return the answer's head at once and its body as it arrives, raw (no decompression,
chunked framing removed, trailers dropped).

One exception family, `UpstreamError`; what each one means decides what the proxy may do:

- `ConnectFailed` (`CertificateRefused`): no connection, nothing sent; another upstream may
  take the request.
- `Dropped`: the connection closed after the request went out and before any answer. The
  upstream may have run it, so it is never sent again (a client resends by itself only when
  the upstream cannot have run the request: the connection was found closed before the
  request was written, writing it failed, or an idempotent request got nothing back on a
  reused connection).
- `BadAnswer`: the answer is not well-formed HTTP (ambiguous framing, bare LF, obs-fold...).
- `ReadTimeout`: silent for longer than the read timeout.
- `Cut`: the body ended early (or the connection was reset where its end was to be).
- `Busy`: every connection this worker may open to that upstream stayed in use.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

Headers = list[tuple[bytes, bytes]]

# Requests whose repetition has the effect of one (RFC 9110 9.2.2): these may be sent again on
# a new connection when a reused one closed without a byte of answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamError(Exception):
    """Any failure to get a whole answer from an upstream."""


class ConnectFailed(UpstreamError):
    """No connection could be made (refused, unreachable, or not within the connect timeout)."""


class CertificateRefused(ConnectFailed):
    """The upstream's TLS certificate was not accepted."""


class Dropped(UpstreamError):
    """The connection closed after the request went out, before any byte of an answer."""


class BadAnswer(UpstreamError):
    """The answer is not well-formed HTTP."""


class ReadTimeout(UpstreamError):
    """The upstream was silent for longer than the read timeout."""


class Cut(UpstreamError):
    """The connection failed in the middle of an answer."""


class Busy(UpstreamError):
    """Every connection allowed to the upstream stayed in use."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: plain requests go to it in absolute form, TLS ones through CONNECT."""

    host: str
    port: int
    authorization: bytes = b""  # a `Proxy-Authorization` value, from `user:pass@` in its URL

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an upstream is and how to reach it, built at start-up. Equal endpoints share
    their connections."""

    scheme: str
    host: str  # IPv6 without brackets
    port: int
    ssl: ssl.SSLContext | None = None  # for https
    proxy: Proxy | None = None
    keepalive: float = 4.0  # the longest an idle connection is kept

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    @property
    def host_header(self) -> bytes:
        return self.origin.partition("://")[2].encode("idna")


class Answer(Protocol):
    """An upstream's answer: status and headers (names in lower case) at once, the body as it
    arrives. Exactly one of `release` (the body was read to its end) or `close` ends it."""

    status: int
    headers: Headers

    def header(self, name: bytes) -> bytes:
        """The first value of header `name` (lower case), or b"" (`ListedHeaders` gives one)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, raw, as it arrives. Raises Cut, BadAnswer or ReadTimeout."""
        ...

    def release(self) -> None:
        """Done: the connection may be reused."""
        ...

    def close(self) -> None:
        """Done early: the connection is closed."""
        ...


class UpstreamClient(Protocol):
    """One per proxy worker, built in its lifespan."""

    async def request(
        self,
        endpoint: Endpoint,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Answer:
        """Send a request (`target`: the path and query), return its answer's head.
        Raises UpstreamError."""
        ...

    async def fetch(
        self,
        endpoint: Endpoint,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        seconds: float,
    ) -> tuple[int, bytes]:
        """GET `target` whole (status and body) within `seconds`. Raises UpstreamError.
        (`FetchThroughRequest` gives one.)"""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


class ListedHeaders:
    """For an `Answer` whose `headers` are the list it keeps: `header` looks through it."""

    __slots__ = ()
    headers: Headers

    def header(self, name: bytes) -> bytes:
        for key, value in self.headers:
            if key == name:
                return value
        return b""


class FetchThroughRequest:
    """For an `UpstreamClient` with no better way: `fetch` through its own `request`."""

    async def fetch(
        self: UpstreamClient,
        endpoint: Endpoint,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        seconds: float,
    ) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(seconds):
                answer = await self.request(endpoint, "GET", target, headers, b"")
                done = False
                try:
                    body = b"".join([chunk async for chunk in answer.chunks()])
                    done = True
                finally:
                    answer.release() if done else answer.close()
        except TimeoutError as exc:
            raise ReadTimeout(f"no whole answer within {seconds:g} s") from exc
        return answer.status, body
