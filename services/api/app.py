"""The api's FastAPI application, built by `create_app(settings)` (run with uvicorn --factory)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware

from services.api import analytics_store, errors, sessions
from services.api.deps import Admin
from services.api.login_throttle import throttle_for
from services.api.middleware import BodyLimit
from services.api.routes import analytics, auth, fleet, health, keys, metrics, nginx, ui
from services.api.security import weak_secrets
from shared import storage
from shared.apikeys import KeyFileError
from shared.cors import cors_options
from shared.fleet import FleetFile
from shared.heartbeat import INTERVAL, Heartbeat
from shared.logs import setup_logging
from shared.settings import Settings, get_settings

log = logging.getLogger("api")

TITLE = "llmp admin API"
VERSION = "1"
ROUTERS = (health, auth, keys, analytics, fleet, ui, nginx, metrics)


async def _beat(beat: Heartbeat) -> None:
    while True:
        try:
            await asyncio.to_thread(beat.beat)  # its fsync must not hold the event loop
        except OSError as exc:
            log.error("heartbeat not written", extra={"fields": {"error": exc}})
        await asyncio.sleep(INTERVAL)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging("api", settings.log_level)
    problems = weak_secrets(settings)
    if problems and settings.production:
        raise SystemExit("llmp api: refusing to start in production:\n- " + "\n- ".join(problems))
    for problem in problems:
        log.warning(problem)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        beat = Heartbeat(settings.run_dir, "api")
        try:  # e.g. room to revoke a key later, or the database's tables
            await asyncio.to_thread(app.state.keyfile.prepare)
        except KeyFileError as exc:  # the database away: key routes say so until it is back
            log.error("key store not ready", extra={"fields": {"error": exc}})
        task = asyncio.create_task(_beat(beat), name="api-heartbeat")
        try:
            yield
        finally:
            task.cancel()
            beat.remove()
            app.state.analytics.close()

    app = FastAPI(
        title=TITLE,
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,
        redirect_slashes=False,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.fleet_file = FleetFile(settings.fleet_file, settings.target_urls)
    app.state.keyfile = storage.key_admin(settings)
    app.state.site = storage.site_store(settings)
    app.state.analytics = analytics_store.for_settings(settings)
    app.state.throttle = throttle_for(settings)
    app.state.sessions = sessions.for_settings(settings)
    errors.install(app)
    for module in ROUTERS:
        app.include_router(module.router)

    @app.get("/", response_class=PlainTextResponse, include_in_schema=False)
    def root() -> str:
        return "LLM Proxy"

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(admin: Admin) -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/docs", include_in_schema=False)
    def docs(admin: Admin) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/api/openapi.json", title=TITLE)

    cors = cors_options(
        settings.cors_origin,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        headers=["Content-Type", "Authorization"],
    )
    # Answers over a kilobyte are gzipped for clients that accept it (analytics JSON shrinks to
    # a fifth or less); the admin app's files that have a precompressed copy pass untouched.
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    if cors is not None:
        app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(BodyLimit, limit=settings.payload_limit)
    return app
