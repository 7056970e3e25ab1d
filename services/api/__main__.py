"""Run the api on 127.0.0.1:API_PORT."""

import uvicorn

from shared.logs import setup_logging
from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    setup_logging("api", settings.log_level)
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host="127.0.0.1",
        port=settings.api_port,
        # The client address is nginx's X-Real-IP, believed only with nginx's proof (see
        # shared/forwarding.py): any local process could send X-Forwarded-For.
        proxy_headers=False,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
