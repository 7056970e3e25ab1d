"""llmp's tables in PostgreSQL (shared/pg/schema.py): migrations applied once, whoever starts
first, however many start at once."""

from __future__ import annotations

import threading

import psycopg

from shared.analytics import COLUMNS
from shared.pg.schema import MIGRATIONS, migrate


def test_replicas_starting_at_once_apply_each_migration_once(database_url):
    applied: list[int] = []
    start = threading.Barrier(6)

    def replica() -> None:
        with psycopg.connect(database_url) as conn:
            start.wait()
            applied.append(migrate(conn))

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(applied) == [0] * 5 + [len(MIGRATIONS)]
    with psycopg.connect(database_url) as conn:
        versions = conn.execute("SELECT version FROM llmp_schema ORDER BY 1").fetchall()
        assert [v for (v,) in versions] == list(range(1, len(MIGRATIONS) + 1))
        assert migrate(conn) == 0


def test_the_usage_table_has_a_column_for_every_field_of_a_row_and_its_id(database_url):
    with psycopg.connect(database_url) as conn:
        migrate(conn)
        found = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'llmp_requests'"
        ).fetchall()
    assert sorted(name for (name,) in found) == sorted([*COLUMNS, "id"])
