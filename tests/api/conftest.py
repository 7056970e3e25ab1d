"""The api in process, logged in as the admin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api import sessions
from services.api.app import create_app
from tests.conftest import make_settings


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    """The api on `tmp_path`'s data, with a Bearer session of the admin."""
    settings = make_settings(tmp_path, log_level="ERROR", jwt_secret="k" * 40)
    token = sessions.for_settings(settings).issue("admin")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client
