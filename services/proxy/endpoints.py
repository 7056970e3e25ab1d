"""How each upstream is reached and how it is told who we are, from TARGET_URLS and settings.

Built once at start-up: an `Endpoint` per upstream (TLS context, egress proxy, keep-alive) and
the header that carries its credentials. Per-upstream options in TARGET_URLS win over the
global settings; a proxy comes from HTTP_PROXY / HTTPS_PROXY unless NO_PROXY (read by the
standard library's own matcher) names the host. A file that cannot be read (CA bundle, client
certificate) stops the start-up with the upstream's position and the error, never a silent
fallback to something less safe.
"""

from __future__ import annotations

import base64
import ssl
import urllib.request
from urllib.parse import unquote, urlsplit

from services.proxy.upstream import Endpoint, Proxy
from shared.settings import Settings
from shared.targets import Upstream


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


def tls_context(upstream: Upstream, settings: Settings) -> ssl.SSLContext:
    ca = upstream.ca or settings.upstream_ca_bundle
    verify = settings.upstream_verify if upstream.verify is None else upstream.verify
    cert = upstream.cert or settings.upstream_client_cert
    cert_key = upstream.cert_key or (settings.upstream_client_key if not upstream.cert else "")
    try:
        context = ssl.create_default_context(cafile=ca or None)
        if cert:
            context.load_cert_chain(cert, cert_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{upstream.label}: TLS files: {exc}") from exc
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def proxy_for(upstream: Upstream, settings: Settings) -> Proxy | None:
    parts = urlsplit(upstream.origin)
    host = parts.hostname or ""
    if upstream.proxy is not None:
        url = upstream.proxy
    # (proxy_bypass_environment is documented in urllib.request, missing from typeshed.)
    elif settings.no_proxy and urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
        f"{host}:{parts.port}" if parts.port else host, {"no": settings.no_proxy}
    ):
        url = ""
    else:
        url = settings.https_proxy if parts.scheme == "https" else settings.http_proxy
    if not url:
        return None
    if "://" not in url:
        url = "http://" + url
    proxy = urlsplit(url)
    if proxy.scheme != "http" or not proxy.hostname:
        raise ValueError(f"{upstream.label}: the proxy must be an http:// URL, not {proxy.scheme}")
    authorization = b""
    if proxy.username is not None:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        authorization = b"Basic " + base64.b64encode(pair.encode())
    return Proxy(proxy.hostname, proxy.port or 80, authorization)


def credentials(upstream: Upstream) -> tuple[tuple[bytes, bytes], ...]:
    """The header that carries the upstream's own credentials (none without any)."""
    if upstream.credentials:
        return ((b"authorization", b"Basic " + base64.b64encode(upstream.credentials.encode())),)
    if not upstream.key:
        return ()
    key = upstream.key.encode("latin-1")
    if upstream.auth == "api-key":
        return ((b"api-key", key),)
    return ((b"authorization", b"Bearer " + key),)
