"""`/admin`: the built admin web app (frontend/dist), with every unknown path under it answered
by its index.html so the app's own routes survive a reload."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

router = APIRouter(include_in_schema=False)


def _dist(request: Request) -> Path:
    return Path(request.app.state.settings.ui_dir).resolve()


@router.get("/admin")
def admin_root() -> RedirectResponse:
    return RedirectResponse("/admin/", status_code=308)


@router.get("/admin/{path:path}")
def admin_file(path: str, request: Request) -> Response:
    dist = _dist(request)
    index = dist / "index.html"
    if not index.is_file():
        return JSONResponse({"error": "The admin UI is not built (make run builds it)"}, 503)
    wanted = (dist / path).resolve()
    if path and wanted.is_file() and wanted.is_relative_to(dist):
        cache = "public, max-age=31536000, immutable" if "/assets/" in f"/{path}" else "no-cache"
        return FileResponse(wanted, headers={"Cache-Control": cache})
    return FileResponse(index, headers={"Cache-Control": "no-cache"})
