"""The api's OpenAPI document without settings, data or a server: the one the api serves at
`/api/openapi.json`, from which the admin UI's types are generated (scripts/api-types).

    python -m services.api.openapi > openapi.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fastapi import FastAPI

from services.api.app import ROUTERS, TITLE, VERSION


def document() -> dict[str, Any]:
    app = FastAPI(title=TITLE, version=VERSION)
    for module in ROUTERS:
        app.include_router(module.router)
    return app.openapi()


def main() -> None:
    json.dump(document(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
