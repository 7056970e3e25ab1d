"""Run the api on 127.0.0.1:API_PORT."""

from typing import Any

import uvicorn

from shared.logs import setup_logging
from shared.settings import get_settings

# How uvicorn serves the api. Its idle connections outlive nginx's (BACKEND_KEEPALIVE, 60 s in
# services/certd/nginx_conf.py): closed first by uvicorn (5 s by default), a kept-alive connection
# could be closed under a request nginx was sending on it, and a POST then failed.
SERVER_OPTIONS: dict[str, Any] = {
    "proxy_headers": False,
    "access_log": False,
    "log_config": None,
    "timeout_keep_alive": 75,
    "timeout_graceful_shutdown": 10,
}


def main() -> None:
    settings = get_settings()
    setup_logging("api", settings.log_level)
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host="127.0.0.1",
        port=settings.api_port,
        # proxy_headers off: the client address is nginx's X-Real-IP, believed only with
        # nginx's proof (see shared/forwarding.py): any local process could send X-Forwarded-For.
        **SERVER_OPTIONS,
    )


if __name__ == "__main__":
    main()
