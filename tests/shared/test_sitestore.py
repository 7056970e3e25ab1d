"""The site store's conformance suite: every case runs against each implementation of
`shared.sitestore` (the files in data/, and PostgreSQL in a throwaway cluster); then what only
several replicas sharing a database show."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from shared.site import CertdStatus, Site, SiteError, no_outcome
from shared.sitefile import SiteFile
from shared.sitestore import SiteStore
from tests.conftest import eventually


def _status(generation: int, nginx_error: str | None = None, cert_error: str | None = None):
    status: CertdStatus = {
        "appliedGeneration": generation,
        "applied": {**no_outcome(), "handled": generation},
        "nginx": {"ok": nginx_error is None, "error": nginx_error, "at": time.time()},
        "certificates": [
            {
                "name": "a.example.test",
                "domains": ["a.example.test"],
                "notAfter": "2027-01-01T00:00:00Z",
                "lastRenewal": None,
                "lastError": cert_error,
            }
        ],
        "reload": no_outcome(),
        "renew": no_outcome(),
        "defaultConfig": "# config\n",
    }
    return status


@pytest.fixture(params=["file", "postgres"])
def stores(request, tmp_path):
    """A function making a SiteStore for replica `name`: the same store for every name in files
    (one box has one certd), one row per name in PostgreSQL."""
    if request.param == "file":
        return lambda name="a": SiteFile(tmp_path / "site.json", tmp_path / "certd" / "status.json")
    from shared.pg.site import PgSite

    url = request.getfixturevalue("database_url")
    return lambda name="a": PgSite(url, name, check_interval=0.3)


def test_the_site_is_changed_under_a_lock_with_the_next_generation(stores):
    store: SiteStore = stores()
    assert store.read_site() == Site() and not store.has_site()
    site = store.update_site(lambda s: replace(s, domains=("a.example.test",)))
    assert site.generation == 1 and store.read_site() == site and store.has_site()

    def refuse(s: Site) -> Site:
        raise SiteError("no")

    with pytest.raises(SiteError):
        store.update_site(refuse)
    assert store.read_site() == site  # nothing written

    # Writers on several threads (several api workers or replicas) lose no change.
    def bump() -> None:
        for _ in range(10):
            stores().update_site(lambda s: replace(s, reload_requested=s.reload_requested + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    last = store.read_site()
    assert (last.reload_requested, last.generation) == (40, 41)


def test_certd_reports_and_the_admin_reads_it(stores):
    store: SiteStore = stores()
    assert store.read_status() is None and store.own_status() is None
    store.write_status(_status(3))
    assert store.own_status() == _status(3) | {"nginx": store.own_status()["nginx"]}
    assert store.read_status()["appliedGeneration"] == 3
    store.beat()
    store.write_status(_status(4, nginx_error="refused"))
    assert store.read_status()["nginx"]["error"] == "refused"


def test_a_change_wakes_the_watch_and_changes_the_signature(stores):
    store: SiteStore = stores()
    woken = threading.Event()
    stop = store.watch(woken.set)
    try:
        woken.wait(3)  # PostgreSQL: connected and listening (its first load wakes)
        time.sleep(0.5)  # files: inotify is set up
        before = store.signature()
        woken.clear()
        stores("b").update_site(lambda s: replace(s, domains=("b.example.test",)))
        assert woken.wait(10)
        eventually(lambda: store.signature() != before, timeout=10)
    finally:
        stop()


# PostgreSQL: several replicas ------------------------------------------------------------------


@pytest.fixture
def pg_stores(database_url):
    from shared.pg.site import PgSite

    return lambda name: PgSite(database_url, name, check_interval=0.3)


def test_every_replica_sees_the_same_status_applied_only_once_applied_everywhere(pg_stores):
    a, b = pg_stores("a"), pg_stores("b")
    a.write_status(_status(5))
    b.write_status(_status(4, nginx_error="port taken", cert_error="rate limited"))
    view = a.read_status()
    assert view == b.read_status()  # the same from every replica
    assert view["appliedGeneration"] == 4
    assert view["nginx"]["ok"] is False and view["nginx"]["error"] == "b: port taken"
    [cert] = view["certificates"]
    assert cert["lastError"] == "b: rate limited"
    b.write_status(_status(5))
    assert a.read_status()["appliedGeneration"] == 5 and a.read_status()["nginx"]["ok"]
    # Each certd reads back its own report, not the sum.
    assert b.own_status()["appliedGeneration"] == 5


def test_a_replica_gone_silent_stops_counting(pg_stores, database_url, monkeypatch):
    import psycopg

    a, b = pg_stores("a"), pg_stores("b")
    a.write_status(_status(5))
    b.write_status(_status(2))
    assert a.read_status()["appliedGeneration"] == 2
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE llmp_certd_status SET seen_at = now() - interval '1 hour' WHERE replica = 'b'"
        )
    assert a.read_status()["appliedGeneration"] == 5
    b.beat()  # alive again
    assert a.read_status()["appliedGeneration"] == 2


def test_the_watch_hears_changes_after_its_connection_was_killed(pg_stores, postgres):
    watcher, writer = pg_stores("a"), pg_stores("b")
    woken = threading.Event()
    stop = watcher.watch(woken.set)
    try:
        assert woken.wait(10)  # connected (the first load counts as a change)
        eventually(lambda: postgres.terminate("llmp-site-listen") > 0, timeout=10)
        time.sleep(0.5)
        woken.clear()
        before = watcher.signature()
        writer.update_site(lambda s: replace(s, domains=("c.example.test",)))
        assert woken.wait(10)
        eventually(lambda: watcher.signature() != before, timeout=10)
    finally:
        stop()


def test_a_database_away_is_an_error_not_an_empty_site(tmp_path):
    from shared.pg.site import PgSite

    store = PgSite(f"postgresql:///nowhere?host={tmp_path}", "a")
    with pytest.raises(SiteError):
        store.read_site()
    with pytest.raises(SiteError):
        store.has_site()
    with pytest.raises(SiteError):
        store.update_site(lambda s: s)
    assert store.read_status() is None
    with pytest.raises(OSError):
        store.write_status(_status(1))


def test_a_store_keeps_one_connection_and_makes_it_again_when_it_broke(
    pg_stores, postgres, database_url
):
    import psycopg

    store = pg_stores("a")
    database = database_url.split("?")[0].rsplit("/", 1)[1]
    store.write_status(_status(1))
    for _ in range(20):  # the api reading the status while it waits for certd
        assert store.read_status()["appliedGeneration"] == 1

    def connections() -> int:
        with psycopg.connect(postgres.url(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'llmp-site' AND datname = %s",
                (database,),
            ).fetchone()
        return int(row[0])

    assert connections() == 1
    assert postgres.terminate("llmp-site") >= 1
    # The next use finds it broken, connects again and succeeds: no error for that one call.
    site = store.update_site(lambda s: replace(s, domains=("d.example.test",)))
    assert store.read_site() == site and connections() == 1
    store.close()
    eventually(lambda: connections() == 0, timeout=10)
