"""Run the proxy on 127.0.0.1:PROXY_PORT with PROXY_WORKERS uvicorn workers."""

from typing import Any

import uvicorn

from services.proxy.server import GatheringHttpToolsProtocol
from shared.settings import get_settings

# How uvicorn serves the proxy (the tests serve it the same way).
SERVER_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": GatheringHttpToolsProtocol,  # httptools, one socket write per loop pass
    "lifespan": "on",
    "access_log": False,
    "proxy_headers": False,  # nothing reads the client address from the scope: skip its rewrite
    "log_config": None,
    "server_header": False,  # no software named (the upstream's server header is not passed on)
    "date_header": False,
    "backlog": 4096,
    "timeout_keep_alive": 75,  # longer than nginx's upstream keepalive_timeout (60 s)
    "timeout_graceful_shutdown": 30,
}


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "services.proxy.app:create_app",
        factory=True,
        host="127.0.0.1",
        port=settings.proxy_port,
        workers=settings.proxy_workers,
        **SERVER_OPTIONS,
    )


if __name__ == "__main__":
    main()
