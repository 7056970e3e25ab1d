"""`GET /healthz` (is every program up?) and `GET /api/upstreams` (each upstream's health and
models), from the heartbeats the programs keep in `data/run/`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api import schemas
from services.api.deps import Admin, SettingsDep
from shared import status

router = APIRouter(responses=schemas.REFUSALS)


@router.get(
    "/healthz",
    response_model=schemas.Health,
    responses={503: {"model": schemas.Health, "description": "a program is down"}},
)
def healthz(settings: SettingsDep) -> JSONResponse:
    report = status.health(settings)
    body = {"status": report["status"], "programs": report["programs"]}
    return JSONResponse(body, status_code=200 if report["ok"] else 503)


@router.get("/api/upstreams", response_model=schemas.Upstreams)
def list_upstreams(admin: Admin, settings: SettingsDep) -> dict[str, Any]:
    return {"success": True, "upstreams": status.upstreams(status.alive(settings, "proxy"))}
