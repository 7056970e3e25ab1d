"""Settings, read from `.env` and overridden by real environment variables.

The original llm-proxy's names keep their meanings (`PORT`, `PAYLOAD_LIMIT`, `TARGET_URLS`,
`JWT_SECRET`, `AUTH_USERNAME`, `AUTH_PASSWORD`, `CORS_ORIGIN`, `NODE_ENV`), and all of them are
honoured, including those the original read before loading `.env`. Every path is a setting, so
the same stack runs unprivileged from a checkout and as root in the container.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.site import SiteError, valid_cidrs
from shared.targets import Upstream, parse_target_urls
from shared.webhooks import parse_webhook_urls

_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Parse a size the way the original's `bytes` library does: `1mb`, `50MB`, `512kb`, `1024`."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if match is None:
        raise ValueError(f"not a size: {value!r} (use a number of bytes or e.g. 512kb, 1mb, 50mb)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "b").lower()])


def _cidrs(value: object) -> tuple[str, ...]:
    """Comma-separated IPv4 or IPv6 networks (`shared.site.valid_cidr`)."""
    if isinstance(value, tuple):
        return value
    items = [item.strip() for item in str(value or "").split(",") if item.strip()]
    try:
        return valid_cidrs(items)
    except SiteError as exc:
        raise ValueError(str(exc)) from None


def _targets(value: object) -> tuple[Upstream, ...]:
    if isinstance(value, tuple):
        return value
    return parse_target_urls(str(value or ""))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    # The original's settings.
    port: int = 8080
    payload_limit: Annotated[int, BeforeValidator(parse_size)] = 1024**2
    target_urls: Annotated[tuple[Upstream, ...], NoDecode, BeforeValidator(_targets)] = ()
    jwt_secret: str = "your-jwt-secret"
    auth_username: str = "admin"
    auth_password: str = "secure_password"
    cors_origin: str = ""
    node_env: str = ""

    # Where things live. Relative paths are relative to the working directory (the checkout, or
    # /app in the container, whose image points the last three at the original's mount points).
    data_dir: Path = Path("data")
    state_dir: Path = Path("var")
    nginx_conf_dir: Path = Path("nginx")
    letsencrypt_dir: Path = Path("certs")
    cloudflare_credentials: Path = Path("cloudflare_credentials")
    nginx_bin: str = "nginx"
    ui_dir: Path = Path(__file__).resolve().parent.parent / "frontend" / "dist"

    # nginx listens on PORT (and HTTPS_PORT) on BIND_ADDRESS (empty: every address); the programs
    # behind it only ever listen on loopback.
    bind_address: str = ""
    https_port: int = 443
    # Where TLS ends: `nginx` (llmp's own, certificates by certd) or `load-balancer` (an
    # external one or an ingress: nginx serves plain HTTP only and certd obtains nothing). The
    # load balancers' addresses (TRUSTED_PROXIES, CIDRs) are the only peers whose
    # X-Forwarded-For and X-Forwarded-Proto nginx believes.
    tls_termination: Literal["nginx", "load-balancer"] = "nginx"
    trusted_proxies: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_cidrs)] = ()
    # Behind a TCP load balancer (haproxy's send-proxy-v2): ports that take the PROXY protocol
    # from TRUSTED_PROXIES, serving what PORT and HTTPS_PORT serve (0: none).
    proxy_protocol_port: int = Field(default=0, ge=0, le=65535)
    proxy_protocol_https_port: int = Field(default=0, ge=0, le=65535)
    api_port: int = 8081
    proxy_port: int = 8082
    proxy_workers: int = Field(default=2, ge=1, le=64)

    # Upstreams.
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 600.0
    models_refresh_seconds: float = 60.0
    models_timeout_seconds: float = 5.0
    models_stale_seconds: float = 600.0
    # An upstream that fails UPSTREAM_FAILURES times in a row (no connection, 5xx, a timeout) is
    # chosen last for UPSTREAM_COOLDOWN seconds, then probed with one request; each failed probe
    # doubles the cooldown, up to UPSTREAM_COOLDOWN_MAX (services/proxy/cooldown.py). 0: never.
    upstream_failures: int = Field(default=3, ge=0, le=1000)
    upstream_cooldown: float = Field(default=30.0, gt=0, le=86400)
    upstream_cooldown_max: float = Field(default=300.0, gt=0, le=86400)
    # The upstream client: `own` (services/proxy/pool.py) or `aiohttp` (see docs/performance.md).
    upstream_client: Literal["own", "aiohttp"] = "own"
    # Connections per upstream per proxy worker; more requests wait for one (UPSTREAM_CONNECT_
    # TIMEOUT at most). An idle connection is kept UPSTREAM_KEEPALIVE seconds: less than the
    # upstreams' own idle timeout (uvicorn's, so vLLM's, is 5 s), so that none is reused just
    # as its upstream closes it.
    upstream_max_connections: int = Field(default=1024, ge=1)
    upstream_keepalive: float = Field(default=4.0, ge=0, le=3600)
    # TLS to the upstreams: a CA bundle (PEM) to trust instead of the system's, verification
    # (never turn it off for an upstream across a network you do not own), a client certificate.
    upstream_ca_bundle: str = ""
    upstream_verify: bool = True
    upstream_client_cert: str = ""
    upstream_client_key: str = ""
    # Egress proxies, as curl and most tools read them (also from the environment in lower case).
    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    # The fair queue of an upstream with `concurrency=N` (per proxy worker).
    queue_limit: int = Field(default=100, ge=0)
    queue_timeout: float = Field(default=60.0, gt=0)
    # Ask upstreams for token usage on streams whose client did not (the client's stream is
    # unchanged).
    stream_usage: bool = True

    # The admin API.
    analytics_retention_days: int = Field(default=90, ge=1)
    # The hourly and daily sums of the analytics outlive the rows they were made from.
    analytics_rollup_retention_days: int = Field(default=730, ge=1)
    login_max_failures: int = Field(default=10, ge=1)
    login_window_seconds: float = Field(default=600.0, gt=0)

    # Certificates (certd): certbot with the Cloudflare DNS-01 plugin. CERTBOT_BIN empty means the
    # certbot installed beside this Python; its directories default to LETSENCRYPT_DIR (config)
    # and folders inside it. CERTBOT_ENV (a JSON object) is added to certbot's environment: tests
    # point it at a private ACME server and a fake Cloudflare API there.
    acme_server: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_email: str = ""
    certbot_bin: str = ""
    certbot_work_dir: Path | None = None
    certbot_logs_dir: Path | None = None
    certbot_env: dict[str, str] = Field(default_factory=dict)
    certbot_timeout: float = Field(default=600.0, gt=0)
    dns_propagation_seconds: int = Field(default=10, ge=0)
    # Renewal checks: every RENEW_INTERVAL_SECONDS, and as soon as a certificate reaches
    # certbot's renewal time; never more often than RENEW_RETRY_SECONDS (failures wait this long).
    renew_interval_seconds: float = Field(default=12 * 3600.0, gt=0)
    renew_retry_seconds: float = Field(default=3600.0, gt=0)
    # nginx: connections per worker (0: 65536 shared by the workers, within the descriptor limit),
    # and requests in progress per client address (past that, a 429): enough for one application
    # server or an office behind NAT holding a thousand streams (256 refused the bench's 1,000).
    nginx_worker_connections: int = Field(default=0, ge=0)
    nginx_connections_per_address: int = Field(default=2048, ge=1)
    # Who runs `nginx -t` on a candidate configuration when certd runs as root (a user name, or
    # `uid[:gid]`): a user that owns nothing and cannot read llmp's secrets.
    nginx_test_user: str = "nobody"
    # How long the api's /nginx routes wait for certd to report the outcome of a change.
    certd_wait_seconds: float = Field(default=240.0, gt=0)

    # Webhooks (shared/webhooks.py): where the events an admin must hear about are POSTed,
    # signed with WEBHOOK_SECRET (required with URLs); a bounded queue per process, retried
    # with exponential backoff from WEBHOOK_BACKOFF_SECONDS.
    webhook_urls: Annotated[tuple[str, ...], NoDecode, BeforeValidator(parse_webhook_urls)] = ()
    webhook_secret: str = ""
    webhook_queue_limit: int = Field(default=100, ge=1)
    webhook_retries: int = Field(default=5, ge=0, le=20)
    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_backoff_seconds: float = Field(default=1.0, gt=0)
    # A certificate this close to its end (days) is announced (`certificate.expiring`).
    cert_expiry_warning_days: float = Field(default=14.0, gt=0)
    # Where replicas share their state: a PostgreSQL URL (postgresql://user:pass@host/db, or
    # with ?host=/socket/dir). Empty: everything stays in data/ (files and SQLite), as on one box.
    database_url: str = ""
    # This replica's name among those sharing DATABASE_URL (its certd's report is filed under
    # it); empty: the host name (a container's or a pod's own).
    replica_name: str = Field(default="", max_length=200)

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _load_balancers_named(self) -> Settings:
        proxy_protocol = bool(self.proxy_protocol_port or self.proxy_protocol_https_port)
        http_balancer = self.tls_termination == "load-balancer"
        if (http_balancer or proxy_protocol) and not self.trusted_proxies:
            raise ValueError(
                "TLS_TERMINATION=load-balancer and PROXY_PROTOCOL_PORT need TRUSTED_PROXIES: the"
                " load balancers' addresses (CIDRs, comma-separated), the only peers whose word"
                " for the client's address nginx believes"
            )
        if http_balancer and proxy_protocol:
            raise ValueError(
                "TLS_TERMINATION=load-balancer takes X-Forwarded-For from the load balancer;"
                " PROXY_PROTOCOL_PORT is for a TCP load balancer in front of llmp's own TLS:"
                " set one or the other"
            )
        if self.trusted_proxies and not (http_balancer or proxy_protocol):
            raise ValueError(
                "TRUSTED_PROXIES is for TLS_TERMINATION=load-balancer or PROXY_PROTOCOL_PORT:"
                " set one of them, or leave it empty"
            )
        return self

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        if self.webhook_urls and len(self.webhook_secret) < 16:
            raise ValueError(
                "WEBHOOK_URLS needs WEBHOOK_SECRET (16 characters or more) to sign the events: "
                'make one with `python3 -c "import secrets; print(secrets.token_hex(32))"`'
            )
        return self

    @property
    def production(self) -> bool:
        return self.node_env == "production"

    @property
    def replica(self) -> str:
        return self.replica_name or socket.gethostname()

    @property
    def run_dir(self) -> Path:
        """Heartbeats of every program (`run/<program>.json`)."""
        return self.data_dir / "run"

    @property
    def board_file(self) -> Path:
        return self.state_dir / "limits.board"

    @property
    def apikeys_file(self) -> Path:
        return self.data_dir / "apikeys.json"

    @property
    def fleet_file(self) -> Path:
        """The upstreams and aliases managed at runtime (shared/fleet.py); TARGET_URLS until
        it exists."""
        return self.data_dir / "upstreams.json"

    @property
    def webhooks_ledger(self) -> Path:
        """The last event sent per subject, shared by every process (shared/webhooks.py)."""
        return self.data_dir / "webhooks.json"

    @property
    def analytics_db(self) -> Path:
        return self.data_dir / "analytics.db"

    @property
    def prices_file(self) -> Path:
        return self.data_dir / "prices.json"

    @property
    def nginx_prefix(self) -> Path:
        return self.state_dir / "nginx"

    @property
    def site_file(self) -> Path:
        """Desired state of nginx and certificates (written by the api, read by certd)."""
        return self.data_dir / "site.json"

    @property
    def certd_status_file(self) -> Path:
        """What certd observed and did (written by certd, read by the api)."""
        return self.data_dir / "certd" / "status.json"

    @property
    def certbot_command(self) -> str:
        return self.certbot_bin or str(Path(sys.executable).parent / "certbot")

    @property
    def certbot_dirs(self) -> tuple[Path, Path, Path]:
        """certbot's config, work and logs directories, absolute."""
        config = self.letsencrypt_dir.absolute()
        work = self.certbot_work_dir or config / "work"
        logs = self.certbot_logs_dir or config / "logs"
        return config, work.absolute(), logs.absolute()


def load_settings(env_file: str | None = None, **overrides: object) -> Settings:
    """Read settings from `env_file` (default: `$ENV_FILE`, else `.env`) and the environment."""
    path = env_file or os.environ.get("ENV_FILE", ".env")
    # pydantic-settings takes `_env_file` at construction, which mypy cannot see; the overrides
    # are validated like any other input.
    return Settings(_env_file=path, **overrides)  # type: ignore[call-arg, arg-type]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
