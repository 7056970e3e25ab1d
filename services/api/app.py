"""The api's FastAPI application, built by `create_app(settings)` (run with uvicorn --factory)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from services.api import health
from shared.heartbeat import INTERVAL, Heartbeat
from shared.settings import Settings, get_settings

log = logging.getLogger("api")


async def _beat(beat: Heartbeat) -> None:
    while True:
        try:
            beat.beat()
        except OSError as exc:
            log.error("heartbeat not written", extra={"fields": {"error": exc}})
        await asyncio.sleep(INTERVAL)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        beat = Heartbeat(settings.run_dir, "api")
        task = asyncio.create_task(_beat(beat), name="api-heartbeat")
        try:
            yield
        finally:
            task.cancel()
            beat.remove()

    app = FastAPI(
        title="llmp admin API",
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.settings = settings
    app.include_router(health.router)

    @app.get("/", response_class=PlainTextResponse, include_in_schema=False)
    def root() -> str:
        return "LLM Proxy"

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": exc.detail},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "Invalid request body"}, status_code=400)

    return app
