"""`CORS_ORIGIN`: which browser origins may call llmp, as options for Starlette's CORSMiddleware.

`true` reflects any origin (without credentials), `false` or empty disables CORS, anything else
is a comma-separated list of origins, which may send credentials. (The original sent the
literal header `Access-Control-Allow-Origin: true`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cors_options(
    cors_origin: str, methods: Sequence[str], headers: Sequence[str], expose: Sequence[str] = ()
) -> dict[str, Any] | None:
    """Keyword arguments for CORSMiddleware, or None for no CORS."""
    value = cors_origin.strip()
    if value.lower() in ("", "false"):
        return None
    common = {
        "allow_methods": list(methods),
        "allow_headers": list(headers),
        "expose_headers": list(expose),
        "max_age": 600,
    }
    if value.lower() == "true":
        return {**common, "allow_origin_regex": ".*", "allow_credentials": False}
    origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
    return {**common, "allow_origins": origins, "allow_credentials": True}
