import stat
from pathlib import Path

import pytest

from llmp.envfile import EnvFileError, create_env_file
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


def test_an_empty_env_is_filled_in_place(tmp_path):
    # `touch .env` before `docker compose up`: the file is mounted, so it must keep its inode.
    target = tmp_path / ".env"
    target.touch(mode=0o644)
    inode = target.stat().st_ino
    password = create_env_file(target, EXAMPLE)
    assert password is not None
    assert target.stat().st_ino == inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert load_settings(str(target)).auth_password == password


def test_a_directory_where_env_should_be_is_refused(tmp_path):
    # What docker compose makes of a .env that does not exist.
    target = tmp_path / ".env"
    target.mkdir()
    with pytest.raises(EnvFileError, match="is a directory where the settings file should be"):
        create_env_file(target, EXAMPLE)
