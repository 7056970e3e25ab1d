"""`/nginx/*`: certificates and the nginx configuration, with the original's answers.

Nothing here runs certbot or nginx. Each change is written to the site (the desired state, whose
only writer is the api: `data/site.json`, or PostgreSQL, see `shared.sitestore`) and the route
then waits, at most CERTD_WAIT_SECONDS, for certd to report that it applied that generation
(every replica's certd, with several replicas), so the answer
tells the real outcome: a certificate refused by the CA, or a config refused by `nginx -t`, is a
failure with certbot's or nginx's own message (the original answered success either way).
Domains and CIDR groups are validated first; anything else is a 400.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Request

from services.api import schemas
from services.api.deps import Admin, AdminAction, SettingsDep, SiteDep
from services.api.errors import Failure
from services.api.validation import read_fields
from shared.custom_config import check_custom_config
from shared.heartbeat import read_heartbeats
from shared.key_validation import BodyError
from shared.settings import Settings
from shared.site import (
    CertdStatus,
    Site,
    SiteError,
    certificate_name,
    valid_cidrs,
    valid_domain,
    valid_domains,
    valid_email,
    valid_http_mode,
)
from shared.sitestore import SiteStore

log = logging.getLogger("api.nginx")

router = APIRouter(prefix="/nginx", responses=schemas.FAILURES)

POLL = 0.1
INVALID = "Invalid request body"


async def _fields(request: Request) -> dict[str, Any]:
    try:
        return await read_fields(request)
    except BodyError as exc:
        raise Failure(400, INVALID) from exc


async def _change(store: SiteStore, change: Callable[[Site], Site]) -> Site:
    try:
        return await asyncio.to_thread(store.update_site, change)
    except SiteError as exc:
        log.error("site unreadable; nothing written", extra={"fields": {"error": exc}})
        raise Failure(500, f"The site is unreadable: {exc}") from exc
    except OSError as exc:
        raise Failure(500, f"Failed to save the site: {exc}") from exc


def _certd_alive(settings: Settings) -> bool:
    return any(
        b.get("program") == "certd" and b["alive"] for b in read_heartbeats(settings.run_dir)
    )


async def _wait(
    settings: Settings, store: SiteStore, done: Callable[[CertdStatus], bool]
) -> CertdStatus:
    """certd's status once `done(status)`; a 504 if that takes longer than CERTD_WAIT_SECONDS."""
    deadline = time.monotonic() + settings.certd_wait_seconds
    while True:
        status = await asyncio.to_thread(store.read_status)
        if status is not None and done(status):
            return status
        if time.monotonic() > deadline:
            running = "" if _certd_alive(settings) else " (certd is not running)"
            raise Failure(
                504,
                f"Saved, but certd has not applied it within {settings.certd_wait_seconds:g}s"
                f"{running}; see GET /nginx/status",
            )
        await asyncio.sleep(POLL)


def _applied(generation: int) -> Callable[[CertdStatus], bool]:
    return lambda status: status["appliedGeneration"] >= generation


@router.post("/certificates/obtain", response_model=schemas.Message)
async def obtain(
    request: Request, admin: Admin, settings: SettingsDep, store: SiteDep
) -> schemas.Message:
    """Body `{"domains": ["llm.example.com", "*.example.com"], "email"?: "you@example.com"}`:
    one certificate for all the domains (named after the first), by Cloudflare DNS-01."""
    if settings.tls_termination == "load-balancer":
        raise Failure(
            409,
            "TLS ends at the load balancer (TLS_TERMINATION=load-balancer): llmp obtains no "
            "certificates",
        )
    fields = await _fields(request)
    if not isinstance(fields.get("domains"), list):
        raise Failure(400, INVALID)
    try:
        domains = valid_domains(fields["domains"])
        email = valid_email(fields["email"]) if "email" in fields else None
    except SiteError as exc:
        raise Failure(400, str(exc)) from exc

    def change(site: Site) -> Site:
        site = site.with_certificate(domains)
        return site if email is None else replace(site, acme_email=email)

    site = await _change(store, change)
    log.info("certificate requested", extra={"fields": {"domains": ",".join(domains)}})
    status = await _wait(settings, store, _applied(site.generation))
    name = certificate_name(domains)
    state = next((c for c in status["certificates"] if c["name"] == name), None)
    if state is None or state["lastError"] or set(state["domains"]) != set(domains):
        why = f": {state['lastError']}" if state and state["lastError"] else ""
        raise Failure(500, f"No certificate for {', '.join(domains)}{why}")
    return {"success": True, "message": "Certificates obtained successfully."}


@router.delete("/certificates/{name}", response_model=schemas.Message)
async def remove_certificate(
    name: str, admin: Admin, settings: SettingsDep, store: SiteDep
) -> schemas.Message:
    """Forget a certificate that was asked for and never issued (certd stops trying). One that
    was issued stays, and so does the one the site's domain needs."""
    status = await asyncio.to_thread(store.read_status)
    state = next((c for c in status["certificates"] if c["name"] == name), None) if status else None
    if state is not None and state["notAfter"] is not None:
        raise Failure(409, f"{name} has been issued; only a certificate never issued is removed")
    site = await asyncio.to_thread(_read_site, store)
    if not any(c.name == name for c in site.certificates):
        raise Failure(404, f"No certificate {name} was asked for")
    remaining = replace(site, certificates=tuple(c for c in site.certificates if c.name != name))
    if any(c.name == name for c in remaining.wanted_certificates()):
        raise Failure(409, f"The site's domain needs {name}; change the domain first")

    def change(current: Site) -> Site:
        return replace(
            current, certificates=tuple(c for c in current.certificates if c.name != name)
        )

    site = await _change(store, change)
    log.info("certificate request removed", extra={"fields": {"name": name}})
    await _wait(settings, store, _applied(site.generation))
    return {"success": True, "message": f"Removed {name}."}


def _read_site(store: SiteStore) -> Site:
    try:
        return store.read_site()
    except SiteError as exc:
        raise Failure(500, f"The site is unreadable: {exc}") from exc


async def _ask(settings: Settings, store: SiteStore, action: Literal["renew", "reload"]) -> None:
    """Ask certd for a one-shot action (a counter in the site) and wait for its outcome."""
    counter = f"{action}_requested"
    site = await _change(store, lambda s: replace(s, **{counter: getattr(s, counter) + 1}))
    wanted = getattr(site, counter)
    status = await _wait(settings, store, lambda st: st[action]["handled"] >= wanted)
    if not status[action]["ok"]:
        raise Failure(500, status[action]["message"] or f"{action.capitalize()} failed")


@router.get("/certificates/renew", response_model=schemas.Message)
async def renew(admin: AdminAction, settings: SettingsDep, store: SiteDep) -> schemas.Message:
    """Renew the certificates certbot says are due, then reload nginx. A certificate never
    issued is not renewed, and the answer says so rather than claim success for it."""
    await _ask(settings, store, "renew")
    status = await asyncio.to_thread(store.read_status)
    certificates = status["certificates"] if status else []
    missing = [c["name"] for c in certificates if c["notAfter"] is None]
    if missing and len(missing) == len(certificates):
        raise Failure(
            409, f"Nothing to renew: {', '.join(missing)} has never been issued (obtain it first)"
        )
    if missing:
        return {
            "success": True,
            "message": "Certificates renewed successfully, but for "
            f"{', '.join(missing)}, never issued (obtain it first).",
        }
    return {"success": True, "message": "Certificates renewed successfully."}


@router.get("/reload", response_model=schemas.Message)
async def reload(admin: AdminAction, settings: SettingsDep, store: SiteDep) -> schemas.Message:
    """Reload nginx with the configuration in force."""
    await _ask(settings, store, "reload")
    return {"success": True, "message": "Nginx configuration reloaded successfully."}


@router.post("/config/write-default", response_model=schemas.Message)
async def write_default(
    request: Request, admin: Admin, settings: SettingsDep, store: SiteDep
) -> schemas.Message:
    """Body `{"domain": "llm.example.com", "cidrGroups": ["203.0.113.0/24"], "httpMode"?:
    "redirect" | "serve"}`: llmp's own configuration for the site (replacing a custom one);
    a certificate for the domain is obtained if none covers it."""
    fields = await _fields(request)
    if not isinstance(fields.get("domain"), str) or not isinstance(fields.get("cidrGroups"), list):
        raise Failure(400, INVALID)
    try:
        domain = valid_domain(fields["domain"])
        cidrs = valid_cidrs(fields["cidrGroups"])
        http_mode = valid_http_mode(fields.get("httpMode", "redirect"))
    except SiteError as exc:
        raise Failure(400, str(exc)) from exc

    def change(site: Site) -> Site:
        return replace(
            site, domains=(domain,), cidr_groups=cidrs, http_mode=http_mode, custom_config=None
        )

    site = await _change(store, change)
    log.info(
        "default config requested",
        extra={"fields": {"domain": domain, "cidrs": ",".join(cidrs), "http": http_mode}},
    )
    status = await _wait(settings, store, _applied(site.generation))
    if not status["applied"]["ok"]:
        raise Failure(500, status["applied"]["message"] or "Failed to write the default config")
    return {"success": True, "message": "Default config written successfully"}


@router.post("/config/update", response_model=schemas.Message)
async def update_config(
    request: Request, admin: Admin, settings: SettingsDep, store: SiteDep
) -> schemas.Message:
    """Body `{"config": "<server.conf>"}`: the admin's own server configuration, within the
    allowlist of `shared.custom_config` (a 400 saying what is not allowed); if nginx refuses
    it, the answer is nginx's message and the previous configuration stays."""
    fields = await _fields(request)
    config = fields.get("config")
    if not isinstance(config, str):
        raise Failure(400, INVALID)
    try:
        check_custom_config(config, settings.letsencrypt_dir)
    except SiteError as exc:
        raise Failure(400, str(exc)) from exc
    previous: list[str | None] = []

    def change(site: Site) -> Site:
        previous.append(site.custom_config)
        return replace(site, custom_config=config)

    site = await _change(store, change)
    status = await _wait(settings, store, _applied(site.generation))
    if status["nginx"]["ok"]:
        log.info("custom config applied")
        return {"success": True, "message": "Nginx configuration updated."}

    # Refused: nginx keeps serving the previous config; make the desired state say so too, so
    # that later changes (a renewed certificate, say) do not try this one again.
    def revert(current: Site) -> Site:
        if current.custom_config != config:
            return current
        return replace(current, custom_config=previous[0])

    reverted = await _change(store, revert)
    await _wait(settings, store, _applied(reverted.generation))
    log.info("custom config refused", extra={"fields": {"error": status["nginx"]["error"]}})
    raise Failure(400, status["nginx"]["error"] or "nginx refused the configuration")


@router.get("/config/get", response_model=schemas.Config)
def get_config(admin: Admin, settings: SettingsDep) -> schemas.Config:
    """The server configuration nginx runs."""
    path = (settings.nginx_conf_dir / "server.conf").absolute()
    try:
        config = path.read_text()
    except FileNotFoundError as exc:
        raise Failure(500, f"ENOENT: no such file or directory, open '{path}'", config="") from exc
    except OSError as exc:
        raise Failure(500, str(exc), config="") from exc
    return {"success": True, "config": config}


@router.get("/config/get-default", response_model=schemas.Config)
def get_default(admin: Admin, store: SiteDep) -> schemas.Config:
    """The configuration write-default makes of the current site (a start for your own)."""
    status = store.read_status()
    if status is None or "defaultConfig" not in status:
        raise Failure(500, "certd has not reported yet; is it running?")
    return {"success": True, "config": status["defaultConfig"]}


@router.get("/status", response_model=schemas.NginxStatus)
def nginx_status(admin: Admin, settings: SettingsDep, store: SiteDep) -> schemas.NginxStatus:
    """Desired and applied generations, nginx's state, every certificate, the site."""
    site = _read_site(store)
    status = store.read_status()
    nginx = (
        status["nginx"]
        if status
        else {"ok": False, "error": "certd has not reported yet", "at": 0.0}
    )
    certificates = status["certificates"] if status else []
    return {
        "success": True,
        "generation": site.generation,
        "appliedGeneration": status["appliedGeneration"] if status else 0,
        "nginx": {"ok": nginx["ok"], "error": nginx["error"], "at": nginx["at"]},
        "certificates": [
            {
                "name": c["name"],
                "domains": c["domains"],
                "notAfter": c["notAfter"],
                "lastRenewal": c["lastRenewal"],
                "lastError": c["lastError"],
            }
            for c in certificates
        ],
        "site": {
            "domains": list(site.domains),
            "cidrGroups": list(site.cidr_groups),
            "acmeEmail": site.acme_email or settings.acme_email,
            "httpMode": site.http_mode,
        },
    }
