"""The upstream client on aiohttp (`UPSTREAM_CLIENT=aiohttp`): the reference the own client is
held to in tests/proxy/conformance, and the fallback where it falls short.

One `ClientSession` per worker: no decompression, no cookies, no redirects, no default
headers of its own, timeouts set for LLM traffic (connect, then the longest silence), at most
UPSTREAM_MAX_CONNECTIONS per upstream. Proxies come resolved in the `Endpoint` (from the same
environment variables, `.env` and the per-upstream option), so `trust_env` stays off: it would
also apply a proxy that TARGET_URLS turned off, and read ~/.netrc. aiohttp's exceptions become
the `upstream` family here and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from services.proxy.upstream import (
    BadAnswer,
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

# Headers aiohttp would add on its own: the client's pass through instead, or none.
_SKIP = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
_NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def translate(exc: BaseException) -> UpstreamError:
    """aiohttp's failure as ours. The order matters: the specific before the general."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return CertificateRefused(f"certificate refused: {exc.certificate_error}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectFailed(f"no connection in time: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientHttpProxyError):
        return ConnectFailed(str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Dropped("the upstream closed the connection without answering")
    if isinstance(exc, TimeoutError):  # SocketTimeoutError and ServerTimeoutError too
        return ReadTimeout(f"no answer in time: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):  # its parser refused the head
        return BadAnswer(f"malformed answer: {exc.message}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Cut(str(exc))
    if isinstance(exc, aiohttp.ClientOSError):
        return Dropped(f"the connection failed: {exc}")
    return BadAnswer(f"{type(exc).__name__}: {exc}")


class AiohttpAnswer(ListedHeaders):
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Headers = [(name.lower(), value) for name, value in response.raw_headers]

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = translate(exc)
                if isinstance(error, Dropped | BadAnswer) and not isinstance(exc, TimeoutError):
                    error = Cut(str(error))  # mid-body, every failure is a cut
                raise error from exc
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class AiohttpClient(FetchThroughRequest):
    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = 1024,
        keepalive: float = 4.0,
    ) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=max_connections, keepalive_timeout=keepalive
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=connect_timeout,  # waiting for a free connection included
                sock_connect=connect_timeout,
                sock_read=read_timeout,
            ),
        )

    async def request(
        self,
        endpoint: Endpoint,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> AiohttpAnswer:
        url = URL(endpoint.origin + target.decode("latin-1"), encoded=True)
        sent = CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers)
        proxy = endpoint.proxy
        proxy_headers = None
        if proxy is not None and proxy.authorization:
            value = proxy.authorization.decode("latin-1")
            if endpoint.scheme == "https":  # for its CONNECT
                proxy_headers = {"Proxy-Authorization": value}
            else:  # with the request itself, which goes to the proxy
                sent["Proxy-Authorization"] = value
        try:
            response = await self.session.request(
                method,
                url,
                headers=sent,
                data=None if not body and method in _NO_BODY else body,
                allow_redirects=False,
                ssl=endpoint.ssl if endpoint.ssl is not None else True,
                proxy=None if proxy is None else proxy.url,
                proxy_headers=proxy_headers,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc) from exc
        return AiohttpAnswer(response)

    async def close(self) -> None:
        await self.session.close()
