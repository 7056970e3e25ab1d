"""Dependencies the routes declare: settings, the key file, the site store, the analytics store,
and the admin check."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request

from services.api import sessions
from services.api.analytics_store import AnalyticsStore
from services.api.errors import AuthError
from shared import forwarding
from shared.fleet import FleetFile
from shared.keystore import KeyAdmin
from shared.settings import Settings
from shared.sitestore import SiteStore

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _keyfile(request: Request) -> KeyAdmin:
    keyfile: KeyAdmin = request.app.state.keyfile
    return keyfile


def _site_store(request: Request) -> SiteStore:
    store: SiteStore = request.app.state.site
    return store


def _analytics(request: Request) -> AnalyticsStore:
    analytics: AnalyticsStore = request.app.state.analytics
    return analytics


def _fleet_file(request: Request) -> FleetFile:
    fleet_file: FleetFile = request.app.state.fleet_file
    return fleet_file


def client_address(request: Request) -> str:
    """The client's address: X-Real-IP when nginx vouches for it, else the peer's."""
    settings: Settings = request.app.state.settings
    return forwarding.client_address(
        request.client.host if request.client else None,
        request.headers.get("x-real-ip"),
        request.headers.get(forwarding.HEADER),
        settings.jwt_secret,
    )


def _same_origin(request: Request, strict: bool) -> bool:
    """Does this cookie-carrying request come from a page of our own origin?

    A browser's `Sec-Fetch-Site` decides when present (`none`: the admin typed the address).
    Otherwise `Origin`, else `Referer`, must name our host. A request with none of them passes
    only if not `strict`: a POST or DELETE, which browsers send with an `Origin` whenever it is
    not same-origin; never a GET that acts (a same-site page can send one without a referrer).
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return not strict
    return urlsplit(origin).netloc == request.headers.get("host", "")


def admin(request: Request, settings: Annotated[Settings, Depends(_settings)]) -> str:
    """The logged-in admin's name, from the `auth_token` cookie or a Bearer JWT.

    State-changing requests authenticated by the cookie must come from our own origin.
    """
    return _authenticated(request, settings, acts=request.method not in SAFE_METHODS, strict=False)


def admin_action(request: Request, settings: Annotated[Settings, Depends(_settings)]) -> str:
    """As `admin`, for the original's GET routes that change something (reload, renew): they
    get the origin check of writes too (SameSite does not cover a sibling subdomain), and by
    cookie they need a same-origin signal (the admin UI's fetches send `Sec-Fetch-Site`; the
    original's clients send a Bearer token, which no page can make a browser send)."""
    return _authenticated(request, settings, acts=True, strict=True)


def _authenticated(request: Request, settings: Settings, acts: bool, strict: bool) -> str:
    cookie = request.cookies.get(sessions.COOKIE)
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    bearer = bearer.strip() if scheme == "Bearer" else ""
    if not cookie and not bearer:
        raise AuthError(401, "Authentication required")
    checker: sessions.Sessions = request.app.state.sessions
    if bearer:
        return checker.verify(bearer)
    if acts and not _same_origin(request, strict):
        raise AuthError(403, "Cross-origin request refused")
    return checker.verify(cookie or "")


SettingsDep = Annotated[Settings, Depends(_settings)]
FleetDep = Annotated[FleetFile, Depends(_fleet_file)]
KeyFileDep = Annotated[KeyAdmin, Depends(_keyfile)]
SiteDep = Annotated[SiteStore, Depends(_site_store)]
AnalyticsDep = Annotated[AnalyticsStore, Depends(_analytics)]
Admin = Annotated[str, Depends(admin)]
AdminAction = Annotated[str, Depends(admin_action)]
