"""Rendering of the nginx configuration.

Two files: the main `nginx.conf` under the nginx prefix (process settings, temp paths, which we
own entirely) and `server.conf` in `NGINX_CONF_DIR` (the routes). Invariants of what we render:
- `/v1/` goes to the proxy, unbuffered both ways with long timeouts, and is never IP-restricted;
- admin paths (`/admin`, `/auth`, `/api`, `/nginx`, `/metrics`, and `/healthz`, which names the
  upstreams; any case, with or without a trailing slash) are allowed only from the admin CIDR groups (loopback and private ranges until
  some are configured) and go to the api;
- everything else goes to the api;
- the services see the real client address in `X-Real-IP` / `X-Forwarded-For`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shared.settings import Settings

PRIVATE_RANGES = (
    "127.0.0.0/8",
    "::1",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
ADMIN_PATHS = ("admin", "auth", "api", "nginx", "metrics", "healthz")


def main_conf_path(settings: Settings) -> Path:
    return (settings.nginx_prefix / "conf" / "nginx.conf").absolute()


def server_conf_path(settings: Settings) -> Path:
    return (settings.nginx_conf_dir / "server.conf").absolute()


def render_main(settings: Settings, server_conf: Path) -> str:
    prefix = settings.nginx_prefix.absolute()
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# Rendered by llmp certd; edits are overwritten.
daemon off;
worker_processes auto;
worker_shutdown_timeout 30s;
pid {prefix}/run/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
{temp}

    include {server_conf};
}}
"""


def render_server(settings: Settings, admin_cidrs: Sequence[str] = PRIVATE_RANGES) -> str:
    listen = f"{settings.bind_address}:{settings.port}" if settings.bind_address else settings.port
    allow = "\n".join(f"        allow {cidr};" for cidr in admin_cidrs)
    admin = "|".join(ADMIN_PATHS)
    return f"""# Rendered by llmp certd; edits are overwritten.
upstream llmp_proxy {{
    server 127.0.0.1:{settings.proxy_port};
    keepalive 256;
}}

upstream llmp_api {{
    server 127.0.0.1:{settings.api_port};
    keepalive 16;
}}

server {{
    listen {listen} default_server;
    server_name _;

    # The proxy enforces PAYLOAD_LIMIT with an OpenAI-shaped 413; the api limits its own bodies.
    client_max_body_size 0;
    # Bodies stream through, never to temp files (whose folder nginx's unprivileged workers may
    # not be able to reach when llmp runs as root from a private folder).
    proxy_request_buffering off;
    proxy_max_temp_file_size 0;

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;

    location ^~ /v1/ {{
        proxy_pass http://llmp_proxy;
        proxy_buffering off;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
    }}

    location = /v1 {{
        proxy_pass http://llmp_proxy;
    }}

    location ~* ^/({admin})(/|$) {{
{allow}
        deny all;
        proxy_pass http://llmp_api;
    }}

    location / {{
        proxy_pass http://llmp_api;
    }}
}}
"""
