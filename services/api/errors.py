"""The api's error answers, in the original's two shapes, and nothing else.

- `Failure`: `{"success": false, "message": ...}` (keys, analytics, fleet, nginx routes);
- `AuthError`: `{"error": ...}` (auth routes and the admin token check).
An analytics store that cannot be read (`StoreUnavailable`: the database away) is a 500 saying so;
anything unexpected is a 500 in the shape of the route's family, without a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.api.analytics_store import StoreUnavailable

log = logging.getLogger("api")

_FAILURE_PREFIXES = ("/api/keys", "/api/analytics", "/api/fleet", "/nginx")


class Failure(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


class AuthError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def answer(
    path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error in the shape the route's family uses."""
    if path.startswith(_FAILURE_PREFIXES):
        return JSONResponse({"success": False, "message": message}, status, headers=headers)
    return JSONResponse({"error": message}, status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Failure)
    async def failure(request: Request, exc: Failure) -> JSONResponse:
        return JSONResponse({"success": False, "message": exc.message, **exc.extra}, exc.status)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("analytics store unavailable", extra={"fields": {"error": str(exc)}})
        message = "Failed to retrieve analytics: the database is unreachable"
        return answer(request.url.path, 500, message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, exc.detail)
        return answer(request.url.path, exc.status_code, str(message), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(request.url.path, 400, "Invalid request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The route's template, not the path: some paths hold an API key.
        route = getattr(request.scope.get("route"), "path", "?")
        log.exception("unexpected error", extra={"fields": {"route": route}})
        return answer(request.url.path, 500, "Internal server error")
