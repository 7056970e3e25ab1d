"""`llmp database import|export` (llmp/database.py): an embedded install into PostgreSQL and
back, unchanged; a move that would mix two installs is refused."""

from __future__ import annotations

import sqlite3
import time

import pytest

from llmp.__main__ import main
from shared import analytics
from shared.analytics import COLUMNS, RequestRow
from shared.apikeys import ApiKey, Budget, read_keys, write_keys

DAY_MS = 86_400_000


def llmp(tmp_path, *argv: str, **env: str) -> int:
    envfile = tmp_path / f"env-{len(list(tmp_path.glob('env-*')))}"
    envfile.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    with pytest.raises(SystemExit) as stop:
        main(["--env-file", str(envfile), *argv])
    return int(stop.value.code or 0)


def rows_of(db_path) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return db.execute(f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY start_ms").fetchall()


def test_an_install_goes_into_the_database_and_comes_back_the_same(tmp_path, database_url, capsys):
    here, back = tmp_path / "here", tmp_path / "back"
    alice = ApiKey.new("alice")
    bob = ApiKey.new("bob").updated(
        {"enabled": False, "models": ("llama*",), "budget": Budget("day", tokens=10)}
    )
    write_keys(here / "apikeys.json", [alice, bob])
    now = int(time.time() * 1000)
    db = analytics.connect(here / "analytics.db")
    analytics.insert(
        db,
        [
            RequestRow(
                request_id=f"r{n}",
                key_id=(alice, bob)[n % 2].id,
                username=(alice, bob)[n % 2].username,
                start_ms=now - (n % 3) * DAY_MS - n,
                end_ms=now if n % 5 else None,
                status=200,
                model="m",
                stream=bool(n % 2),
                prompt_tokens=n,
            )
            for n in range(12_000)  # more than a batch
        ],
    )
    db.close()

    assert llmp(tmp_path, "database", "import", DATA_DIR=here, DATABASE_URL=database_url) == 0
    assert "imported 2 keys and 12000 requests" in capsys.readouterr().out
    assert llmp(tmp_path, "database", "import", DATA_DIR=here, DATABASE_URL=database_url) == 1
    assert "holds 2 keys already" in capsys.readouterr().err

    assert llmp(tmp_path, "database", "export", DATA_DIR=back, DATABASE_URL=database_url) == 0
    assert read_keys(back / "apikeys.json") == [alice, bob]
    assert rows_of(back / "analytics.db") == rows_of(here / "analytics.db")
    assert llmp(tmp_path, "database", "export", DATA_DIR=back, DATABASE_URL=database_url) == 1
    assert "holds 2 keys" in capsys.readouterr().err


def test_a_move_without_a_database_says_which_setting_is_missing(tmp_path, capsys):
    assert llmp(tmp_path, "database", "import", DATA_DIR=tmp_path / "data") == 1
    assert "DATABASE_URL is not set" in capsys.readouterr().err


def test_migrate_brings_the_tables_up_to_date_once(tmp_path, database_url, capsys):
    from shared.pg.schema import MIGRATIONS

    assert llmp(tmp_path, "database", "migrate", DATABASE_URL=database_url) == 0
    assert f"applied {len(MIGRATIONS)} migrations" in capsys.readouterr().out
    assert llmp(tmp_path, "database", "migrate", DATABASE_URL=database_url) == 0
    assert "applied 0 migrations" in capsys.readouterr().out
    assert llmp(tmp_path, "database", "migrate") == 1
    assert "DATABASE_URL is not set" in capsys.readouterr().err
