"""Leadership of a job that must run once (shared/leader.py, shared/pg/leader.py): one leader at a
time among processes sharing a database, taken over when the leader's connection dies; on one
box, always the leader."""

from __future__ import annotations

import itertools
import threading

import psycopg
import pytest

from shared.leader import AlwaysLeader
from shared.pg.leader import PgLeader, lock_key
from shared.settings import Settings
from shared.storage import leader


def test_one_box_always_leads_and_unknown_jobs_are_refused(tmp_path):
    one = leader(Settings(data_dir=tmp_path), "usage")
    assert isinstance(one, AlwaysLeader)
    assert one.lead() and one.lead()
    one.release()
    with pytest.raises(ValueError):
        AlwaysLeader("rollup")
    with pytest.raises(ValueError):
        lock_key("certbot; DROP")


def test_lock_keys_stay_what_an_earlier_version_took():
    # certd's was taken by the version where the job list was rollups, retention, import, certd
    assert lock_key("certd") == 0x6C6C6D70_0103
    assert lock_key("usage") == 0x6C6C6D70_0100


def test_each_job_has_its_own_lock(database_url):
    usage = PgLeader(database_url, "usage")
    certd = PgLeader(database_url, "certd")
    other = PgLeader(database_url, "usage", "llmp-leader-other")
    try:
        assert usage.lead() and certd.lead()
        assert not other.lead()
        assert usage.lead()  # asked again: still held, and held once (released below at once)
        usage.release()
        assert other.lead()
        assert not usage.lead()
    finally:
        for each in (usage, certd, other):
            each.release()


def test_the_other_takes_over_when_the_leaders_connection_dies(postgres, database_url):
    first = PgLeader(database_url, "usage", "llmp-leader-first")
    second = PgLeader(database_url, "usage", "llmp-leader-second")
    try:
        assert first.lead()
        assert not second.lead()
        assert postgres.terminate("llmp-leader-first") == 1
        assert second.lead()
        assert not first.lead()  # it learns it lost, and the lock is the other's now
        assert not first.lead()
        assert second.lead()
    finally:
        first.release()
        second.release()


def count(conn: psycopg.Connection) -> int:
    found = conn.execute("SELECT count(*) FROM runs").fetchone()
    return found[0] if found else 0


def test_two_processes_never_run_the_job_at_once_through_leader_changes(postgres, database_url):
    """Two would-be leaders run the job in a loop as fast as they can, each run a transaction on
    the leader's connection recording when it began and ended (the server's clock); the leader's
    connection is killed again and again. The runs never overlap, and both led."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE runs (who text, began timestamptz, ended timestamptz)")
    stop = threading.Event()
    errors: list[BaseException] = []

    def contender(name: str) -> None:
        me = PgLeader(database_url, "certd", f"llmp-leader-{name}")
        try:
            while not stop.is_set():
                if not me.lead():
                    stop.wait(0.005)
                    continue
                try:
                    with me.connection.transaction():
                        me.connection.execute(
                            "INSERT INTO runs SELECT %s, clock_timestamp(), NULL", (name,)
                        )
                        me.connection.execute("SELECT pg_sleep(0.01)")
                        me.connection.execute(
                            "UPDATE runs SET ended = clock_timestamp() WHERE ended IS NULL"
                            " AND who = %s",
                            (name,),
                        )
                except psycopg.Error:
                    pass  # killed in the middle of a run: nothing of it committed
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            me.release()

    threads = [threading.Thread(target=contender, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    leaders = []
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for _ in range(12):
                # wait for some runs by whoever leads, then kill its connection
                wanted = count(conn) + 5
                for _ in range(3000):
                    if count(conn) >= wanted:
                        break
                    stop.wait(0.01)
                holder = conn.execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                    " USING (pid) WHERE l.locktype = 'advisory' AND l.granted"
                    " AND (l.classid::bigint << 32) + l.objid::bigint = %s",
                    (lock_key("certd"),),
                ).fetchone()
                if holder:
                    leaders.append(holder[0])
                    postgres.terminate(holder[0])
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    with psycopg.connect(database_url) as conn:
        runs = conn.execute("SELECT who, began, ended FROM runs ORDER BY began").fetchall()
    assert all(ended is not None for _, _, ended in runs)
    overlaps = [(a, b) for a, b in itertools.pairwise(runs) if b[1] < a[2]]
    assert overlaps == []
    assert {who for who, _, _ in runs} == {"a", "b"}
    assert len(set(leaders)) == 2
