"""Rendering of the nginx configuration (pure functions: settings and state in, text out).

Two files: the main `nginx.conf` under the nginx prefix (process settings, temp paths, which we
own entirely) and `server.conf` in `NGINX_CONF_DIR` (the routes). Invariants of what we render:
- plain HTTP on PORT; once a certificate exists, TLS (1.2 and 1.3 only) on HTTPS_PORT with the
  same routes, one server per certificate, and HTTP either redirects to HTTPS (except
  `/healthz`, for health checks from admin ranges) or serves the same routes;
- once the site has names (domains, certificates), only they and the machine's addresses are
  served (another Host is a 421), and a redirect's Location never comes from a Host nginx was
  not configured with;
- `/v1/` goes to the proxy, unbuffered both ways with long timeouts, and is never IP-restricted;
- admin paths (`/admin`, `/auth`, `/api`, `/nginx`, `/metrics`, and `/healthz`, which names the
  upstreams; any case, with or without a trailing slash) are allowed only from the admin CIDR
  groups (loopback and private ranges until some are configured) and go to the api;
- `/` is answered by nginx (the original's `LLM Proxy`); everything else is a 404;
- the services see the real client address in `X-Real-IP` / `X-Forwarded-For`, which replace
  whatever the client sent in them, and the scheme in `X-Forwarded-Proto`: nginx's own, or,
  from a load balancer in TRUSTED_PROXIES only, what it says (the client address too: the last
  one in its X-Forwarded-For that is not itself a trusted proxy);
- with TLS_TERMINATION=load-balancer, plain HTTP only: no TLS server, no redirect;
- PROXY_PROTOCOL_PORT and PROXY_PROTOCOL_HTTPS_PORT are twins of PORT and HTTPS_PORT (the same
  servers) for a TCP load balancer that speaks the PROXY protocol; the address it names is the
  client's when it comes from TRUSTED_PROXIES.
Every domain and CIDR rendered here has been validated by `shared.site`.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared import forwarding
from shared.custom_config import check_custom_config
from shared.payload import too_large_body
from shared.settings import Settings
from shared.site import Site, covers

if TYPE_CHECKING:
    from services.certd.certs import Lineage

PRIVATE_RANGES = (
    "127.0.0.0/8",
    "::1",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
ADMIN_PATHS = ("admin", "auth", "api", "nginx", "metrics", "healthz")
ROOT_ANSWER = "LLM Proxy"  # the original's answer at `/`
# Hosts that name this machine rather than the site: a literal IPv4 or IPv6 address,
# `localhost`, and no Host at all (HTTP/1.0).
ADDRESS_NAMES = ("localhost", '""', '"~^[0-9.]+$"', '"~^\\[[0-9a-f:.]+\\]$"')
UNKNOWN_HOST = """    # A Host that is none of the site's names nor an address of this machine.
    return 421;
"""
HEADER = "# Rendered by llmp certd from data/site.json; edits are overwritten.\n"


@dataclass(frozen=True)
class TlsServer:
    """One certificate nginx serves, for the names it covers."""

    server_names: tuple[str, ...]
    fullchain: Path
    privkey: Path


def main_conf_path(settings: Settings) -> Path:
    return (settings.nginx_prefix / "conf" / "nginx.conf").absolute()


def server_conf_path(settings: Settings) -> Path:
    return (settings.nginx_conf_dir / "server.conf").absolute()


EMPTY_ROOT = "empty"  # the folder under the prefix that nginx's `root` names: always empty


# How long nginx keeps an idle connection to the api and the proxy: less than their own
# (uvicorn's timeout_keep_alive, 75 s), so that nginx never sends on one they are closing.
BACKEND_KEEPALIVE = 60
# Slow clients: a request's whole header must arrive within HEADER_TIMEOUT, and a body may
# pause at most BODY_TIMEOUT between two reads (uploads over a slow link keep going).
HEADER_TIMEOUT = "10s"
BODY_TIMEOUT = "30s"
# Connections of all workers together when sized to the machine: what one address can open to
# one port (its source ports), at ~450 bytes of nginx's memory each, allocated at start.
CONNECTIONS_TOTAL = 65536


def worker_connections(settings: Settings) -> tuple[int, int]:
    """Connections per worker and the descriptors a worker may open: NGINX_WORKER_CONNECTIONS,
    or CONNECTIONS_TOTAL shared by the workers (one per CPU), within what the descriptor limit
    allows (a proxied request holds two) and at least 1024."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 4 * CONNECTIONS_TOTAL if hard == resource.RLIM_INFINITY else hard
    share = CONNECTIONS_TOTAL // (os.cpu_count() or 1)
    connections = settings.nginx_worker_connections or max(1024, min(share, hard // 2))
    return connections, min(connections * 2, max(hard, connections))


def render_main(settings: Settings, server_conf: Path, prefix: Path | None = None) -> str:
    """nginx.conf: process settings, and the `http` block that includes `server_conf`. Every
    path nginx may write (pid, temp files) lies under `prefix` (the nginx prefix, or the
    private folder of a test), and the `root` of every server is an empty folder there, so
    that a location serving files can serve nothing of the machine's.

    One address may have at most NGINX_CONNECTIONS_PER_ADDRESS requests in progress (a 429
    past that), in every server, the admin's own included, so that one client's slow or
    endless requests cannot take every connection; a header must come whole within
    HEADER_TIMEOUT."""
    prefix = (prefix or settings.nginx_prefix).absolute()
    connections, descriptors = worker_connections(settings)
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
worker_rlimit_nofile {descriptors};

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
{temp}
    root {prefix}/{EMPTY_ROOT};

    client_header_timeout {HEADER_TIMEOUT};
    client_body_timeout {BODY_TIMEOUT};
    reset_timedout_connection on;
    # A refused request's unread body is waited for briefly (to let its answer arrive), not for
    # nginx's default of up to 30 s: a slot is not held for it.
    lingering_timeout 1s;
    lingering_time 5s;
{_forwarded(settings)}
    limit_conn_zone $binary_remote_addr zone=llmp_address:10m;
    limit_conn llmp_address {settings.nginx_connections_per_address};
    limit_conn_status 429;

    include {server_conf};
}}
"""


def _forwarded(settings: Settings) -> str:
    """The client address and scheme. Behind an HTTP load balancer (TLS_TERMINATION), from its
    X-Forwarded-For (realip) and X-Forwarded-Proto (only `http` or `https`); behind a TCP one,
    from the PROXY protocol on the ports that take it; from TRUSTED_PROXIES only. Else nginx's
    own (`$llmp_proto`: the scheme)."""
    http_balancer = settings.tls_termination == "load-balancer"
    trusted = "\n".join(f"    set_real_ip_from {cidr};" for cidr in settings.trusted_proxies)
    flagged = "\n".join(
        f"        {cidr} 1;" for cidr in (settings.trusted_proxies if http_balancer else ())
    )
    header = "X-Forwarded-For" if http_balancer else "proxy_protocol"
    realip = (
        f"""{trusted}
    real_ip_header {header};
    real_ip_recursive on;
"""
        if settings.trusted_proxies
        else ""
    )
    return f"""{realip}    geo $realip_remote_addr $llmp_from_proxy {{
        default 0;
{flagged}
    }}
    map "$llmp_from_proxy:$http_x_forwarded_proto" $llmp_proto {{
        default $scheme;
        "1:https" https;
        "1:http" http;
    }}"""


def _listen(settings: Settings, port: int) -> str:
    return f"{settings.bind_address}:{port}" if settings.bind_address else str(port)


def _routes(settings: Settings, admin_cidrs: Sequence[str]) -> str:
    allow = "\n".join(f"        allow {cidr};" for cidr in admin_cidrs)
    admin = "|".join(ADMIN_PATHS)
    return f"""    # The proxy enforces PAYLOAD_LIMIT; the api limits its own bodies.
    client_max_body_size 0;

    # Answers nginx cannot hold in memory pass through rather than into temp files, which its
    # unprivileged workers may not reach when llmp runs as root from a private folder.
    proxy_max_temp_file_size 0;

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # With the port ($host drops it): the api compares it with the Origin of cookie writes.
    proxy_set_header Host $http_host;
    # nginx is the first hop: the peer it saw replaces whatever the client claims (appended,
    # a forged address to the left of 127.0.0.1 would be the one the api believes, which lets
    # a client behind a local tunnel dodge the login throttle).
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto $llmp_proto;
    proxy_set_header {forwarding.HEADER} {forwarding.proof(settings.jwt_secret)};

    location ^~ /v1/ {{
        proxy_pass http://llmp_proxy;
        proxy_buffering off;
        proxy_request_buffering off;
        # An answer's head must fit in one buffer: nginx's default page (4 KB) turned an
        # upstream's larger headers into a 502. 16 KB each, allocated per open stream.
        proxy_buffer_size 16k;
        proxy_buffers 8 16k;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
        # A declared length over the limit is refused here, in the proxy's own words: answered
        # by the proxy before nginx had sent the body, it left nginx closing the client's
        # kept-alive connection now and then without saying so. (The proxy limits streamed
        # bodies itself.)
        client_max_body_size {settings.payload_limit};
        error_page 413 = @v1_too_large;
    }}

    location @v1_too_large {{
        default_type application/json;
        return 413 '{too_large_body(settings.payload_limit).decode()}';
    }}

    location = /v1 {{
        proxy_pass http://llmp_proxy;
    }}

    location ~* ^/({admin})(/|$) {{
{allow}
        deny all;
        # /nginx/* waits for certd, which may be running certbot.
        proxy_read_timeout 300s;
        # A declared length over the limit is refused here, before any byte reaches the api
        # (an api answering early while nginx still sends the body can turn into a 502); the
        # api limits streamed bodies itself. Both answer in JSON.
        client_max_body_size {settings.payload_limit};
        error_page 413 = @too_large;
        proxy_request_buffering off;
        proxy_pass http://llmp_api;
    }}

    location @too_large {{
        default_type application/json;
        return 413 '{{"error": "Request body is larger than {settings.payload_limit} bytes"}}';
    }}

    # Answered here: passed on, the raw URI would go too, and `/admin/..` (which nginx
    # normalises to `/`) would reach the api as an admin path from outside the admin networks.
    location = / {{
        default_type "text/plain; charset=utf-8";
        return 200 "{ROOT_ANSWER}";
    }}

    location / {{
        return 404;
    }}
"""


def _redirect(settings: Settings, admin_cidrs: Sequence[str], host: str) -> str:
    """Plain HTTP that redirects to HTTPS on `host`: `$host` only where the server's names
    allow nothing but the site's own, else a name rendered here."""
    allow = "\n".join(f"        allow {cidr};" for cidr in admin_cidrs)
    port = "" if settings.https_port == 443 else f":{settings.https_port}"
    return f"""    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto $llmp_proto;
    proxy_set_header {forwarding.HEADER} {forwarding.proof(settings.jwt_secret)};

    # Health checks (a container's, a load balancer's) keep working over plain HTTP.
    location ~* ^/healthz/?$ {{
{allow}
        deny all;
        proxy_pass http://llmp_api;
    }}

    location / {{
        return 308 https://{host}{port}$request_uri;
    }}
"""


def _default(listens: Sequence[str]) -> list[str]:
    return [f"{listen} default_server" for listen in listens]


def _server(
    listens: Sequence[str], names: Sequence[str], body: str, tls: TlsServer | None = None
) -> str:
    certificate = (
        f"""
    ssl_certificate "{tls.fullchain}";
    ssl_certificate_key "{tls.privkey}";
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:llmp_tls:10m;
    ssl_session_timeout 1d;
"""
        if tls
        else ""
    )
    listen = "\n".join(f"    listen {item};" for item in listens)
    return f"""
server {{
{listen}
    server_name {" ".join(names)};
{certificate}
{body}}}
"""


def render_server(
    settings: Settings,
    admin_cidrs: Sequence[str] = PRIVATE_RANGES,
    tls: Sequence[TlsServer] = (),
    http_mode: str = "redirect",
    names: Sequence[str] = (),
) -> str:
    """server.conf: the upstreams, the HTTP server and one TLS server per certificate.

    Until the site has names (`names`, and those of the certificates), any Host is served.
    Then only those names and the machine's addresses (a literal IP, `localhost`, no Host at
    all: the admin before DNS, health checks) are; any other Host is a 421 from a default
    server of its own, and HTTPS redirects go to the name asked for, or from an address to
    the site's first name."""
    admin_cidrs = admin_cidrs or PRIVATE_RANGES
    names = tuple(dict.fromkeys([*names, *(n for server in tls for n in server.server_names)]))
    routes = _routes(settings, admin_cidrs)
    # Each port, and its twin that takes the PROXY protocol from a TCP load balancer, if any.
    http = [_listen(settings, settings.port)]
    https = [_listen(settings, settings.https_port) + " ssl"]
    if settings.proxy_protocol_port:
        http.append(_listen(settings, settings.proxy_protocol_port) + " proxy_protocol")
    if settings.proxy_protocol_https_port:
        https.append(_listen(settings, settings.proxy_protocol_https_port) + " ssl proxy_protocol")
    text = f"""{HEADER}upstream llmp_proxy {{
    server 127.0.0.1:{settings.proxy_port};
    keepalive 256;
    keepalive_timeout {BACKEND_KEEPALIVE}s;
}}

upstream llmp_api {{
    server 127.0.0.1:{settings.api_port};
    keepalive 16;
    keepalive_timeout {BACKEND_KEEPALIVE}s;
}}
"""
    if not names:
        return text + _server(_default(http), ["_"], routes)
    redirect = bool(tls) and http_mode == "redirect"
    concrete = next((n for n in names if not n.startswith("*.")), None)
    text += _server(_default(http), ["_"], UNKNOWN_HOST)
    text += _server(http, names, _redirect(settings, admin_cidrs, "$host") if redirect else routes)
    to_name = redirect and concrete is not None
    text += _server(
        http, ADDRESS_NAMES, _redirect(settings, admin_cidrs, str(concrete)) if to_name else routes
    )
    if tls:
        text += _server(_default(https), ["_"], UNKNOWN_HOST, tls[0])
    for position, server in enumerate(tls):
        served = [*server.server_names, *(ADDRESS_NAMES if position == 0 else ())]
        text += _server(https, served, routes, server)
    return text


def tls_servers(site: Site, lineages: Mapping[str, Lineage]) -> list[TlsServer]:
    """One TLS server per usable certificate: the one for the site's first domain first (the
    default server), then those the site asks for, then any other found on disk (an earlier
    install's, say). A name goes to the first certificate that has it."""
    wanted = site.wanted_certificates()
    primary: list[str] = []
    if site.domains:
        primary = [c.name for c in wanted if covers(c.domains, site.domains[0])]
        primary += [n for n, lin in lineages.items() if covers(lin.domains, site.domains[0])]
    order = [*primary, *(c.name for c in wanted), *lineages]
    servers: list[TlsServer] = []
    seen: set[str] = set()
    for name in dict.fromkeys(order):
        lineage = lineages.get(name)
        if lineage is None:
            continue
        names = tuple(d for d in lineage.domains if d not in seen)
        if not names:
            continue
        seen.update(names)
        servers.append(TlsServer(names, lineage.fullchain, lineage.privkey))
    return servers


def render_site(settings: Settings, site: Site, lineages: Mapping[str, Lineage]) -> str:
    """server.conf for `site`: the admin's own configuration if they gave one (checked again
    here: it may have been saved by an older llmp; CustomConfigError if it is not allowed),
    else ours."""
    if site.custom_config is not None:
        return check_custom_config(site.custom_config, settings.letsencrypt_dir)
    tls = tls_servers(site, lineages) if settings.tls_termination == "nginx" else []
    return render_server(settings, site.cidr_groups, tls, site.http_mode, site.domains)
