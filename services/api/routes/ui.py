"""`/admin`: the built admin web app (frontend/dist), with every unknown path under it answered
by its index.html so the app's own routes survive a reload.

GET and HEAD both answer. The build writes a brotli (`.br`) and a gzip (`.gz`) copy beside each
file worth compressing (frontend/vite.config.ts); a browser that takes one of them gets it as it
is on disk, with `Content-Encoding`, so nothing is compressed per request. Such an answer says it
varies by `Accept-Encoding`; a plain one gets that from the api's GZip middleware
(services/api/app.py), which may compress it on the fly.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

router = APIRouter(include_in_schema=False)

# Preferred first; the suffix the build gives each encoding's copy.
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
METHODS = ["GET", "HEAD"]


def _dist(request: Request) -> Path:
    return Path(request.app.state.settings.ui_dir).resolve()


def accepted(header: str) -> set[str]:
    """The content codings an `Accept-Encoding` header takes (q above 0), lower-cased.
    `*` is not honoured: a client must name the coding."""
    taken: set[str] = set()
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name and quality > 0:
            taken.add(name.strip().lower())
    return taken


def _file(path: Path, request: Request, cache: str) -> FileResponse:
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    taken = accepted(request.headers.get("accept-encoding", ""))
    for coding, suffix in ENCODINGS:
        copy = path.with_name(path.name + suffix)
        if coding in taken and copy.is_file():
            headers = {
                "Cache-Control": cache,
                "Vary": "Accept-Encoding",
                "Content-Encoding": coding,
            }
            return FileResponse(copy, media_type=media_type, headers=headers)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": cache})


@router.api_route("/admin", methods=METHODS)
def admin_root() -> RedirectResponse:
    return RedirectResponse("/admin/", status_code=308)


@router.api_route("/admin/{path:path}", methods=METHODS)
def admin_file(path: str, request: Request) -> Response:
    dist = _dist(request)
    index = dist / "index.html"
    if not index.is_file():
        return JSONResponse({"error": "The admin UI is not built (make run builds it)"}, 503)
    wanted = (dist / path).resolve()
    compressed = wanted.suffix in {suffix for _, suffix in ENCODINGS}
    if path and wanted.is_file() and wanted.is_relative_to(dist) and not compressed:
        cache = "public, max-age=31536000, immutable" if "/assets/" in f"/{path}" else "no-cache"
        return _file(wanted, request, cache)
    return _file(index, request, "no-cache")
