"""The OpenAPI document written without a server (the admin UI's types come from it) is the one
the api serves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.api.openapi import document

ROOT = Path(__file__).resolve().parents[2]


def test_the_written_document_is_the_one_the_api_serves(api):
    served = api.get("/api/openapi.json")
    assert served.status_code == 200
    assert document() == served.json()


def test_the_command_writes_it_as_json():
    done = subprocess.run(
        [sys.executable, "-m", "services.api.openapi"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert json.loads(done.stdout) == document()
