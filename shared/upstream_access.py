"""How llmp reaches an upstream and tells it who we are: its TLS context, its egress proxy and
the header with its credentials. The proxy's endpoints (services/proxy/endpoints.py) and the
api's upstream test (services/api/probe.py) use these, so a test reaches an upstream exactly as
requests will.

Per-upstream options win over the global settings; a proxy comes from HTTP_PROXY / HTTPS_PROXY
unless NO_PROXY (read by the standard library's own matcher) names the host. A file that cannot
be read (CA bundle, client certificate) is a ValueError naming the upstream, never a silent
fallback to something less safe.
"""

from __future__ import annotations

import base64
import ssl
import urllib.request
from urllib.parse import urlsplit

from shared.settings import Settings
from shared.targets import Upstream


def tls_context(upstream: Upstream, settings: Settings) -> ssl.SSLContext:
    # Its own CA certificates (a file, or PEM text from data/upstreams.json) replace the global.
    ca = upstream.ca or ("" if upstream.ca_data else settings.upstream_ca_bundle)
    verify = settings.upstream_verify if upstream.verify is None else upstream.verify
    cert = upstream.cert or settings.upstream_client_cert
    cert_key = upstream.cert_key or (settings.upstream_client_key if not upstream.cert else "")
    try:
        context = ssl.create_default_context(cafile=ca or None, cadata=upstream.ca_data or None)
        if cert:
            context.load_cert_chain(cert, cert_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{upstream.label}: TLS files: {exc}") from exc
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def proxy_url(upstream: Upstream, settings: Settings) -> str:
    """The egress proxy's URL for this upstream ("" for none), `http://` added if missing."""
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
    if url and "://" not in url:
        url = "http://" + url
    return url


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
