"""How each upstream is reached, from its settings (TARGET_URLS or data/upstreams.json) and
the global ones: an `Endpoint` per upstream (TLS context, egress proxy, keep-alive), built when
the upstream is added. The rules themselves (TLS, proxy, credentials) are in
shared/upstream_access.py, which the api's upstream test uses too.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit

from services.proxy.upstream import Endpoint, Proxy
from shared.settings import Settings
from shared.targets import Upstream
from shared.upstream_access import credentials, proxy_url, tls_context

__all__ = ["credentials", "endpoint_for", "proxy_for"]


def endpoint_for(upstream: Upstream, settings: Settings) -> Endpoint:
    parts = urlsplit(upstream.origin)
    assert parts.hostname is not None
    secure = parts.scheme == "https"
    keepalive = settings.upstream_keepalive if upstream.keepalive is None else upstream.keepalive
    return Endpoint(
        scheme=parts.scheme,
        host=parts.hostname,
        port=parts.port or (443 if secure else 80),
        ssl=tls_context(upstream, settings) if secure else None,
        proxy=proxy_for(upstream, settings),
        keepalive=keepalive,
    )


def proxy_for(upstream: Upstream, settings: Settings) -> Proxy | None:
    url = proxy_url(upstream, settings)
    if not url:
        return None
    proxy = urlsplit(url)
    if proxy.scheme != "http" or not proxy.hostname:
        raise ValueError(f"{upstream.label}: the proxy must be an http:// URL, not {proxy.scheme}")
    authorization = b""
    if proxy.username is not None:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        authorization = b"Basic " + base64.b64encode(pair.encode())
    return Proxy(proxy.hostname, proxy.port or 80, authorization)
