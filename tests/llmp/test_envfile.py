import stat
from pathlib import Path

from llmp.envfile import create_env_file
from services.api.security import weak_secrets
from shared.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_first_run_creates_env_with_strong_fresh_secrets(tmp_path):
    target = tmp_path / ".env"
    password = create_env_file(target, EXAMPLE)
    assert password is not None and len(password) >= 20
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    settings = load_settings(str(target))
    assert settings.auth_password == password
    assert weak_secrets(settings) == []
    other = tmp_path / "other.env"
    create_env_file(other, EXAMPLE)
    assert load_settings(str(other)).jwt_secret != settings.jwt_secret


def test_existing_env_is_left_alone(tmp_path):
    target = tmp_path / ".env"
    target.write_text("PORT=9999\n")
    assert create_env_file(target, EXAMPLE) is None
    assert target.read_text() == "PORT=9999\n"


def test_example_needs_no_edits_to_parse(tmp_path):
    settings = load_settings(str(EXAMPLE))
    assert settings.port == 8080 and len(settings.target_urls) == 2
