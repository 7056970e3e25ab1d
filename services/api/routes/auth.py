"""`/auth/login`, `/auth/logout`, `/auth/token` (legacy) and `/api/me`.

Answers and messages are the original's. Better than it: the password is compared in constant
time, failures are throttled per client network and for the account (429 with Retry-After, see
`throttle`) and logged, and a session ends
at logout, at a change of credentials, and 24 hours after login (see `sessions`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api import schemas, sessions
from services.api.deps import Admin, SettingsDep, client_address
from services.api.errors import AuthError
from services.api.login_throttle import LoginThrottle
from services.api.validation import login_errors, login_schema, request_body, valid_fields
from shared.key_validation import BodyError
from shared.settings import Settings

log = logging.getLogger("api.auth")

router = APIRouter(responses=schemas.REFUSALS)

LOGIN_BODY = request_body(login_schema())


async def _check_login(request: Request, settings: Settings) -> str:
    """The username if the body holds the right credentials; AuthError otherwise."""
    throttle: LoginThrottle = request.app.state.throttle
    address = client_address(request)
    wait = await asyncio.to_thread(throttle.retry_after, address)
    if wait:
        raise AuthError(
            429, "Too many failed logins; try again later", headers={"Retry-After": str(wait)}
        )
    try:
        fields = await valid_fields(request, login_errors)
    except BodyError as exc:
        raise AuthError(400, str(exc)) from exc
    username, password = fields["username"], fields["password"]
    good_user = hmac.compare_digest(username.encode(), settings.auth_username.encode())
    good_password = hmac.compare_digest(password.encode(), settings.auth_password.encode())
    if not (good_user and good_password):
        failures = await asyncio.to_thread(throttle.failed, address)
        log.warning("login failed", extra={"fields": {"address": address, "failures": failures}})
        raise AuthError(401, "Invalid credentials")
    await asyncio.to_thread(throttle.succeeded, address)
    log.info("login", extra={"fields": {"address": address, "username": username}})
    return str(username)


def _sessions(request: Request) -> sessions.Sessions:
    checker: sessions.Sessions = request.app.state.sessions
    return checker


@router.post("/auth/login", response_model=schemas.LoggedIn, openapi_extra=LOGIN_BODY)
async def login(request: Request, settings: SettingsDep) -> JSONResponse:
    username = await _check_login(request, settings)
    response = JSONResponse({"success": True, "username": username})
    response.set_cookie(
        sessions.COOKIE,
        _sessions(request).issue(username),
        max_age=sessions.LIFETIME,
        expires=sessions.LIFETIME,
        path="/",
        httponly=True,
        samesite="strict",
        secure=settings.production,
    )
    return response


@router.post("/auth/token", response_model=schemas.Token, openapi_extra=LOGIN_BODY)
async def token(request: Request, settings: SettingsDep) -> schemas.Token:
    username = await _check_login(request, settings)
    return {"token": _sessions(request).issue(username)}


@router.post("/auth/logout", response_model=schemas.LoggedOut)
async def logout(request: Request, settings: SettingsDep) -> JSONResponse:
    """End the session server-side (its token, cookie or Bearer, stops working everywhere)
    and clear the cookie."""
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    tokens = [request.cookies.get(sessions.COOKIE), bearer.strip() if scheme == "Bearer" else ""]
    for token in filter(None, tokens):
        if await asyncio.to_thread(_sessions(request).end, token):
            log.info("logout")
    response = JSONResponse({"success": True})
    response.delete_cookie(
        sessions.COOKIE, path="/", httponly=True, samesite="strict", secure=settings.production
    )
    return response


@router.get("/api/me", response_model=schemas.Me)
async def me(username: Admin) -> schemas.Me:
    return {"username": username}
