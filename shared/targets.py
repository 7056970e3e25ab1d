"""The `TARGET_URLS` grammar: `url|key|concurrency=N,url,...`.

Compatible with the original: entries are comma-separated and trimmed, an optional upstream key
follows `|`, and a URL with no path (`http://host:1234`) gets `/v1`. Where the original went
wrong we do better: the key is trimmed too, a trailing slash does not double up (`/v1/` is
`/v1`), a bare `host:port` means `http://host:port/v1`, and an entry that is not a URL is an
error with its position rather than a silent `http://localhost/v1`.

Our addition: `concurrency=N` (in any `|` part after the URL) caps the requests in flight to that
upstream; more wait in its fair queue (see services/proxy/gate.py). Without it, no cap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Upstream:
    """One OpenAI-compatible server: `origin` (scheme://host:port), `path` (e.g. `/v1`), `key`."""

    origin: str
    path: str
    key: str = ""
    concurrency: int = 0  # 0: no cap

    @property
    def url(self) -> str:
        """Base URL without the key, which is also the upstream's name in logs and analytics."""
        return self.origin + self.path

    def __repr__(self) -> str:  # never print the key
        cap = f", concurrency={self.concurrency}" if self.concurrency else ""
        return f"Upstream({self.url!r}, key={'***' if self.key else 'none'}{cap})"


_CONCURRENCY = re.compile(r"\s*concurrency\s*=\s*(\S*)\s*")


def parse_target(entry: str) -> Upstream:
    url, *options = entry.split("|")
    key, concurrency = "", 0
    for option in options:
        if match := _CONCURRENCY.fullmatch(option):
            if not match.group(1).isdigit() or int(match.group(1)) < 1:
                raise ValueError(f"concurrency must be a positive integer, not {match.group(1)!r}")
            concurrency = int(match.group(1))
        elif not key:
            key = option.strip()
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    path = parts.path.rstrip("/") or "/v1"
    return Upstream(origin=origin, path=path, key=key, concurrency=concurrency)


def parse_target_urls(value: str) -> tuple[Upstream, ...]:
    """Parse the whole setting; raises ValueError naming the bad entry."""
    upstreams = []
    for position, entry in enumerate(value.split(","), start=1):
        if not entry.strip():
            continue
        try:
            upstreams.append(parse_target(entry))
        except ValueError as exc:
            raise ValueError(f"TARGET_URLS entry {position}: {exc}") from None
    return tuple(upstreams)
