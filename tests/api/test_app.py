"""The api's start-up refusals and CORS settings."""

import pytest

from services.api.app import create_app
from services.api.security import weak_secrets
from shared.cors import cors_options
from tests.conftest import make_settings

GOOD = {"jwt_secret": "k" * 40, "auth_password": "a-good-password"}


@pytest.mark.parametrize(
    "weak",
    [
        {"jwt_secret": "your-jwt-secret"},
        {"jwt_secret": "short"},
        {"auth_password": "secure_password"},
        {"auth_password": "short-pw"},
    ],
)
def test_production_refuses_weak_secrets_and_says_how(tmp_path, weak):
    settings = make_settings(tmp_path, node_env="production", **{**GOOD, **weak})
    with pytest.raises(SystemExit, match="openssl rand"):
        create_app(settings)


def test_good_secrets_start_in_production(tmp_path):
    settings = make_settings(tmp_path, node_env="production", **GOOD)
    assert weak_secrets(settings) == []
    assert create_app(settings) is not None


def test_weak_secrets_only_warn_outside_production(tmp_path, caplog):
    create_app(make_settings(tmp_path, jwt_secret="short", auth_password="short"))
    assert "JWT_SECRET is a default" in caplog.text


def test_cors_origin_values():
    assert cors_options("", [], []) is None and cors_options("false", [], []) is None
    reflect = cors_options("true", [], [])
    assert reflect is not None
    assert reflect["allow_origin_regex"] == ".*" and reflect["allow_credentials"] is False
    listed = cors_options("https://a.example, https://b.example/", [], [])
    assert listed is not None
    assert listed["allow_origins"] == ["https://a.example", "https://b.example"]
    assert listed["allow_credentials"] is True


def _admin_client(settings):
    from fastapi.testclient import TestClient

    from services.api import sessions

    token = sessions.for_settings(settings).issue("admin")
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"})


def test_with_database_url_the_keys_are_the_databases(tmp_path, database_url):
    from shared.pg.keys import PgKeyAdmin

    settings = make_settings(tmp_path, jwt_secret="k" * 40, database_url=database_url)
    with _admin_client(settings) as api:
        made = api.post("/api/keys", json={"username": "alice"})
        assert made.status_code in (200, 201), made.text
        listed = api.get("/api/keys").json()["keys"]
    assert [k.to_json() for k in PgKeyAdmin(database_url).list()] == listed
    assert listed[0]["username"] == "alice"
    assert not (tmp_path / "data" / "apikeys.json").exists()


def test_the_api_starts_while_the_database_is_away_and_says_so_on_key_routes(tmp_path, caplog):
    away = f"postgresql://llmp@/llmp?host={tmp_path / 'no-server-here'}"
    settings = make_settings(tmp_path, jwt_secret="k" * 40, database_url=away)
    with _admin_client(settings) as api:
        assert api.get("/api/keys").status_code == 500
    assert "key store not ready" in caplog.text
