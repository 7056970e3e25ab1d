"""The container's health check: `python -m llmp.health` exits 0 when llmp serves.

Healthy means nginx answers HTTP on PORT and the api's `/healthz` says every program is up. The
api is asked on its own loopback port rather than through nginx: the admin's CIDR groups may
leave loopback out, and a health check must not turn red because of them. nginx is asked for
a path it answers itself (404, or the redirect to HTTPS), never one it passes to the api: while
the api starts, that would put an error line in nginx's log at every check.
"""

from __future__ import annotations

import http.client
import sys

from shared.settings import Settings, load_settings

TIMEOUT = 4.0
NGINX_PROBE = "/.llmp-health"  # nginx's own `location /`: never proxied


def _status(host: str, port: int, path: str) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def check(settings: Settings) -> str | None:
    """What is wrong, or None."""
    nginx_host = settings.bind_address if settings.bind_address not in ("", "0.0.0.0") else ""
    nginx_host = "::1" if nginx_host == "::" else nginx_host or "127.0.0.1"
    try:
        _status(nginx_host, settings.port, NGINX_PROBE)  # any answer: nginx is up
    except OSError as exc:
        return f"nginx does not answer on port {settings.port}: {exc}"
    try:
        status = _status("127.0.0.1", settings.api_port, "/healthz")
    except OSError as exc:
        return f"the api does not answer on port {settings.api_port}: {exc}"
    return None if status == 200 else f"/healthz answers {status}: a program is down"


def main() -> None:
    problem = check(load_settings())
    if problem:
        print(f"llmp: unhealthy: {problem}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
