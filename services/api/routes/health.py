"""`GET /healthz` (is every program up?) and `GET /api/upstreams` (each upstream's health and
models), both from the heartbeats in `data/run/`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api.deps import Admin, SettingsDep
from shared.heartbeat import read_heartbeats
from shared.settings import Settings

router = APIRouter()

PROGRAMS = ("proxy", "certd")


def _alive(settings: Settings, program: str) -> list[dict[str, Any]]:
    return [b for b in read_heartbeats(settings.run_dir)
            if b.get("program") == program and b["alive"]]


def health(settings: Settings) -> tuple[bool, dict[str, Any]]:
    programs: dict[str, Any] = {"api": {"ok": True}}
    for program in PROGRAMS:
        mine = _alive(settings, program)
        errors = [b["last_error"] for b in mine if b.get("last_error")]
        report: dict[str, Any] = {"ok": bool(mine), "processes": len(mine)}
        if errors:
            report["last_error"] = errors[0]
        if program == "certd" and mine:
            nginx = mine[0].get("nginx") or {}
            report["nginx"] = nginx
            report["ok"] = bool(nginx.get("ok"))
        if program == "proxy":
            report["ok"] = len(mine) >= settings.proxy_workers
            report["upstreams"] = upstreams(mine)
        programs[program] = report
    ok = all(p["ok"] for p in programs.values())
    return ok, {"status": "ok" if ok else "degraded", "programs": programs}


def upstreams(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each upstream as the most recent worker sees it, with requests in flight summed."""
    if not workers:
        return []
    latest = max(workers, key=lambda b: b["updated"])
    merged = [dict(u) for u in latest.get("upstreams", [])]
    for upstream in merged:
        upstream["in_flight"] = sum(u["in_flight"] for w in workers
                                    for u in w.get("upstreams", []) if u["url"] == upstream["url"])
    return merged


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    ok, body = health(request.app.state.settings)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/upstreams")
def list_upstreams(admin: Admin, settings: SettingsDep) -> dict[str, Any]:
    return {"success": True, "upstreams": upstreams(_alive(settings, "proxy"))}
