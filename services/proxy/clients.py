"""Which upstream client the proxy uses (UPSTREAM_CLIENT), built in a worker's lifespan."""

from __future__ import annotations

from services.proxy.upstream import UpstreamClient
from shared.settings import Settings


def create_client(settings: Settings) -> UpstreamClient:
    """The client UPSTREAM_CLIENT names; call it with the worker's event loop running."""
    if settings.upstream_client == "aiohttp":
        from services.proxy.aiohttp_client import AiohttpClient  # only where chosen

        return AiohttpClient(
            settings.upstream_connect_timeout,
            settings.upstream_read_timeout,
            settings.upstream_max_connections,
            settings.upstream_keepalive,
        )
    from services.proxy.pool import Pool

    return Pool(
        settings.upstream_connect_timeout,
        settings.upstream_read_timeout,
        settings.upstream_max_connections,
    )
