"""`GET /healthz`: is every program up? Answers from the heartbeats in `data/run/`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from shared.heartbeat import read_heartbeats
from shared.settings import Settings

router = APIRouter()

PROGRAMS = ("proxy", "certd")


def health(settings: Settings) -> tuple[bool, dict[str, Any]]:
    beats = read_heartbeats(settings.run_dir)
    programs: dict[str, Any] = {"api": {"ok": True}}
    for program in PROGRAMS:
        mine = [b for b in beats if b.get("program") == program and b["alive"]]
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
            report["upstreams"] = mine[0].get("upstreams", []) if mine else []
        programs[program] = report
    ok = all(p["ok"] for p in programs.values())
    return ok, {"status": "ok" if ok else "degraded", "programs": programs}


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    ok, body = health(request.app.state.settings)
    return JSONResponse(body, status_code=200 if ok else 503)
