"""The `TARGET_URLS` grammar: `url|key|option=value|...,url,...`.

Compatible with the original: entries are comma-separated and trimmed, an optional upstream key
follows `|`, and a URL with no path (`http://host:1234`) gets `/v1`. Where the original went
wrong we do better: the key is trimmed too, a trailing slash does not double up (`/v1/` is
`/v1`), a bare `host:port` means `http://host:port/v1`, and an entry that is not a URL is an
error with its position rather than a silent `http://localhost/v1`.

Our additions, as `name=value` parts after the URL, in any order (see the README):

- `concurrency=N` caps the requests in flight to that upstream; more wait in its fair queue
  (see services/proxy/gate.py). Without it, no cap.
- `auth=api-key` sends the key in an `api-key` header (Azure OpenAI) instead of
  `Authorization: Bearer`.
- `proxy=http://host:port` (or `proxy=none`) overrides HTTP_PROXY / HTTPS_PROXY / NO_PROXY.
- `ca=/path/bundle.pem`, `verify=false`, `cert=/path/client.pem`, `cert-key=/path/key.pem`:
  TLS trust and a client certificate, overriding the global UPSTREAM_* settings.
- `keepalive=SECONDS`: how long an idle connection to it is kept (below its own idle timeout).

`user:pass@` in the URL is sent as HTTP Basic credentials; with a key as well, the entry is
refused (two credentials for one upstream is ambiguous).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

AUTH_MODES = ("bearer", "api-key")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One OpenAI-compatible server: `origin` (scheme://host:port), `path` (e.g. `/v1`), `key`,
    and how to reach it."""

    origin: str
    path: str
    key: str = ""
    concurrency: int = 0  # 0: no cap
    requests_per_minute: int = 0  # 0: no limit (data/upstreams.json only)
    tokens_per_minute: int = 0  # 0: no limit (data/upstreams.json only)
    auth: str = "bearer"  # how `key` is sent: `bearer` or `api-key`
    credentials: str = ""  # `user:pass` from the URL, sent as Basic auth
    proxy: str | None = None  # None: from the environment; "": none
    ca: str = ""  # a CA bundle (PEM) to trust instead of the global one
    verify: bool | None = None  # None: the global UPSTREAM_VERIFY
    cert: str = ""  # a client certificate (PEM), with its key unless `cert_key`
    cert_key: str = ""
    keepalive: float | None = None  # None: the global UPSTREAM_KEEPALIVE
    ca_data: str = ""  # CA certificates (PEM text) to trust instead of the global bundle
    models: tuple[str, ...] | None = None  # glob patterns of its models to serve; None: all
    index: int = field(default=0, compare=False)  # its position in the list, from 1
    id: str = field(default="", compare=False)  # its id in data/upstreams.json

    @property
    def url(self) -> str:
        """Base URL without the key, the upstream's name in logs and analytics (not in
        answers to clients, which see `label`)."""
        return self.origin + self.path

    @property
    def label(self) -> str:
        """How answers to clients name it: internal host names stay in the logs."""
        return f"upstream {self.index}" if self.index else "upstream"

    def __repr__(self) -> str:  # never print the key or the credentials
        cap = f", concurrency={self.concurrency}" if self.concurrency else ""
        secret = "***" if self.key or self.credentials else "none"
        return f"Upstream({self.url!r}, key={secret}{cap})"


_OPTION = re.compile(r"\s*(concurrency|auth|proxy|ca|verify|cert|cert-key|keepalive)\s*=(.*)", re.S)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _options(parts: list[str]) -> dict[str, object]:
    found: dict[str, object] = {}
    for part in parts:
        match = _OPTION.fullmatch(part)
        if match is None:
            if "key" not in found and part.strip():
                found["key"] = part.strip()
            continue
        name, value = match.group(1), match.group(2).strip()
        if name == "concurrency":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"concurrency must be a positive integer, not {value!r}")
            found["concurrency"] = int(value)
        elif name == "auth":
            if value.lower() not in AUTH_MODES:
                raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {value!r}")
            found["auth"] = value.lower()
        elif name == "proxy":
            found["proxy"] = "" if value.lower() == "none" else check_proxy(value)
        elif name == "verify":
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"verify must be true or false, not {value!r}")
            found["verify"] = value.lower() in _TRUE
        elif name == "keepalive":
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1
            if not 0 <= seconds <= 3600:
                raise ValueError(f"keepalive must be seconds from 0 to 3600, not {value!r}")
            found["keepalive"] = seconds
        else:
            if not value:
                raise ValueError(f"{name} needs a file path")
            found[name.replace("-", "_")] = value
    return found


def check_proxy(value: str) -> str:
    """A proxy URL, checked: `http://[user:pass@]host:port` (an HTTP proxy; TLS to the upstream
    goes through its CONNECT)."""
    value = value.strip()
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"bad port in proxy {parts.hostname!r}") from exc
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"a proxy must be an http:// URL (host and port), not {parts.scheme}://")
    return value


def parse_target(entry: str) -> Upstream:
    url, *parts = entry.split("|")
    options = _options(parts)
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts_ = urlsplit(url)
    try:
        port = parts_.port
    except ValueError as exc:
        raise ValueError(f"bad port in {parts_.hostname!r}") from exc
    if parts_.scheme not in ("http", "https") or not parts_.hostname:
        raise ValueError(f"not an http(s) URL: {parts_.scheme}://{parts_.hostname or ''}")
    if parts_.username is not None or parts_.password is not None:
        if options.get("key"):
            raise ValueError("both user:pass@ in the URL and a key: give one of them")
        user, password = unquote(parts_.username or ""), unquote(parts_.password or "")
        options["credentials"] = f"{user}:{password}"
    host = parts_.hostname if ":" not in parts_.hostname else f"[{parts_.hostname}]"
    origin = f"{parts_.scheme}://{host}" + (f":{port}" if port is not None else "")
    path = parts_.path.rstrip("/") or "/v1"
    return Upstream(origin, path, **options)  # type: ignore[arg-type]


def parse_target_urls(value: str) -> tuple[Upstream, ...]:
    """Parse the whole setting; raises ValueError naming the bad entry (never its key)."""
    upstreams: list[Upstream] = []
    for position, entry in enumerate(value.split(","), start=1):
        if not entry.strip():
            continue
        try:
            upstream = parse_target(entry)
        except ValueError as exc:
            raise ValueError(f"TARGET_URLS entry {position}: {exc}") from None
        upstreams.append(replace(upstream, index=len(upstreams) + 1))
    return tuple(upstreams)
