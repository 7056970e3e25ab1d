"""Run the proxy on 127.0.0.1:PROXY_PORT with PROXY_WORKERS uvicorn workers."""

import uvicorn

from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "services.proxy.app:create_app",
        factory=True,
        host="127.0.0.1",
        port=settings.proxy_port,
        workers=settings.proxy_workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        backlog=4096,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
