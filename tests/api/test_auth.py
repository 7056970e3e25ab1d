"""`/auth/login`: any wrong password is invalid credentials, whatever its length."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from tests.conftest import make_settings

PASSWORD = "the-admin-password"


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(
        create_app(make_settings(tmp_path, auth_password=PASSWORD, jwt_secret="s" * 40))
    )


@pytest.mark.parametrize("password", ["x", "short", "seven77", "not-the-password"])
def test_a_wrong_password_of_any_length_is_invalid_credentials(
    client: TestClient, password: str
) -> None:
    r = client.post("/auth/login", json={"username": "admin", "password": password})
    assert (r.status_code, r.json()) == (401, {"error": "Invalid credentials"})


def test_a_missing_password_is_still_a_bad_request(client: TestClient) -> None:
    r = client.post("/auth/login", json={"username": "admin", "password": ""})
    assert (r.status_code, r.json()) == (400, {"error": '"password" is not allowed to be empty'})
    r = client.post("/auth/login", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200
