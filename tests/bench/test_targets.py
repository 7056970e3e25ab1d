"""What the benchmark's `llmp-pg` target is set up with (bench/targets.py), short of starting
it: its database, whose server's process tree is counted as the target's `database` cost, and
the key its clients send, held by that database."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg

from bench.procs import tree
from bench.targets import put_keys_in_database, start_database, write_key_file
from shared.pg.keys import PgKeyAdmin


def test_the_replicas_key_is_the_one_its_database_holds(postgres, tmp_path: Path):
    url = postgres.new_database()
    secret = "sk-" + secrets.token_hex(32)
    key_file = tmp_path / "apikeys.json"
    write_key_file(key_file, secret)
    assert key_file.stat().st_mode & 0o777 == 0o600
    put_keys_in_database(key_file, url)
    [key] = PgKeyAdmin(url).list()
    assert (key.username, key.key) == ("bench", secret)
    put_keys_in_database(key_file, url)  # the file's set again: still the one key
    assert [k.id for k in PgKeyAdmin(url).list()] == [key.id]


def test_the_database_is_a_new_one_whose_connections_the_servers_tree_counts():
    cluster, url, pid = start_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_database(), pg_backend_pid(),"
                " (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
            ).fetchone()
            assert row is not None
            database, backend, tables = row
            assert database != "postgres" and tables == 0  # a new, empty database
            # This connection's backend is in the tree whose CPU the target counts.
            assert backend in [p.pid for p in tree(pid)]
    finally:
        cluster.remove()
