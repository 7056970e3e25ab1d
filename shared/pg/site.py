"""The site and certd's reports in PostgreSQL (`shared.sitestore.SiteStore`), shared by every
replica: the api of any replica changes the site, every replica's certd applies it, and the
admin sees the same status from each (see `shared.pg.schema` for the tables).

A change takes the site's row lock (`SELECT ... FOR UPDATE`), so two replicas' changes never
lose one another; its NOTIFY reaches every certd's LISTEN connection (`watch`), which wakes
certd at once. Every CHECK_INTERVAL seconds without a notification the watch compares the
generation as well, in case one was missed (a connection broken and made again counts as a
change); a change of the shared certificates (`services.certd.pgshare`) wakes it the same way.
certd's reports are one row per replica, kept alive by `beat()`; the admin's view
merges those seen within STALE_AFTER seconds (`shared.site.merge_statuses`), or, if none is,
the last ones there are. A database that cannot be reached is a `SiteError` for the site, no
report for the status.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from shared.heartbeat import STALE_AFTER
from shared.pg.schema import SITE_CHANNEL, migrate
from shared.site import CertdStatus, Site, SiteError, merge_statuses

log = logging.getLogger("site.pg")

T = TypeVar("T")

CONNECT_TIMEOUT = 5  # seconds
CHECK_INTERVAL = 2.0
MAX_BACKOFF = 5.0


class PgSite:
    def __init__(self, url: str, replica: str, check_interval: float = CHECK_INTERVAL) -> None:
        self.url = url
        self.replica = replica
        self.check_interval = check_interval
        self._changes = 0  # counted by the watch: `signature()`
        self._lock = threading.Lock()  # guards _changes
        # One connection, kept (the api reads the status ten times a second while it waits for
        # certd), used by one thread at a time; dropped on any error, made again on next use.
        self._conn: psycopg.Connection[Any] | None = None
        self._closer: weakref.finalize[Any, Any] | None = None
        self._conn_lock = threading.Lock()

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`work` in a transaction on the connection, the schema up to date. A kept connection
        that broke meanwhile (the database restarted) is made again and `work` tried once more.
        Raises psycopg.Error."""
        with self._conn_lock:
            while True:
                fresh = self._conn is None or self._conn.closed
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(
                            self.url,
                            autocommit=True,  # each use a transaction of its own: none lingers
                            connect_timeout=CONNECT_TIMEOUT,
                            application_name="llmp-site",
                        )
                        # Closed with the store, when it is closed or goes away.
                        self._closer = weakref.finalize(self, _close, self._conn)
                        migrate(self._conn)
                    with self._conn.transaction():
                        return work(self._conn)
                except psycopg.OperationalError:
                    self._drop()
                    if fresh:
                        raise
                except psycopg.Error:
                    self._drop()
                    raise

    def _drop(self) -> None:
        self._conn = None
        if self._closer is not None:
            self._closer()

    def close(self) -> None:
        with self._conn_lock:
            self._drop()

    # The site -------------------------------------------------------------------------------

    def read_site(self) -> Site:
        try:
            row = self._run(lambda conn: conn.execute("SELECT doc FROM llmp_site").fetchone())
        except psycopg.Error as exc:
            raise SiteError(f"site database: {exc}") from exc
        return _site(row)

    def has_site(self) -> bool:
        try:
            row = self._run(lambda conn: conn.execute("SELECT 1 FROM llmp_site").fetchone())
        except psycopg.Error as exc:
            raise SiteError(f"site database: {exc}") from exc
        return row is not None

    def update_site(self, change: Callable[[Site], Site]) -> Site:
        def update(conn: psycopg.Connection[Any]) -> Site:
            row = conn.execute("SELECT doc FROM llmp_site FOR UPDATE").fetchone()
            if row is None:  # the first change: one row, whoever inserts first
                conn.execute(
                    "INSERT INTO llmp_site VALUES (true, 0, %s) ON CONFLICT DO NOTHING",
                    (Jsonb(Site().to_json()),),
                )
                row = conn.execute("SELECT doc FROM llmp_site FOR UPDATE").fetchone()
            current = _site(row)
            updated = replace(change(current), generation=current.generation + 1)
            conn.execute(
                "UPDATE llmp_site SET generation = %s, doc = %s",
                (updated.generation, Jsonb(updated.to_json())),
            )
            return updated

        try:
            return self._run(update)
        except psycopg.Error as exc:
            raise SiteError(f"site database: {exc}") from exc

    # certd's reports ------------------------------------------------------------------------

    def read_status(self) -> CertdStatus | None:
        try:
            rows = self._run(
                lambda conn: conn.execute(
                    "SELECT replica, doc, seen_at > now() - make_interval(secs => %s)"
                    " FROM llmp_certd_status ORDER BY replica",
                    (STALE_AFTER,),
                ).fetchall()
            )
        except psycopg.Error as exc:
            log.error("certd's reports unreadable", extra={"fields": {"error": exc}})
            return None
        live = [(replica, doc) for replica, doc, alive in rows if alive]
        return merge_statuses(live or [(replica, doc) for replica, doc, _ in rows])

    def own_status(self) -> CertdStatus | None:
        try:
            row = self._run(
                lambda conn: conn.execute(
                    "SELECT doc FROM llmp_certd_status WHERE replica = %s", (self.replica,)
                ).fetchone()
            )
        except psycopg.Error as exc:
            log.error("certd's last report unreadable", extra={"fields": {"error": exc}})
            return None
        return row[0] if row else None  # written by certd from the same TypedDict

    def write_status(self, status: CertdStatus) -> None:
        try:
            self._run(
                lambda conn: conn.execute(
                    "INSERT INTO llmp_certd_status (replica, doc) VALUES (%s, %s)"
                    " ON CONFLICT (replica) DO UPDATE SET doc = excluded.doc, seen_at = now()",
                    (self.replica, Jsonb(status)),
                )
            )
        except psycopg.Error as exc:
            raise OSError(f"certd's report not saved: {exc}") from exc

    def beat(self) -> None:
        try:
            self._run(
                lambda conn: conn.execute(
                    "UPDATE llmp_certd_status SET seen_at = now() WHERE replica = %s",
                    (self.replica,),
                )
            )
        except psycopg.Error as exc:
            log.warning("certd's liveness not saved", extra={"fields": {"error": exc}})

    # Changes --------------------------------------------------------------------------------

    def signature(self) -> Hashable:
        with self._lock:
            return self._changes

    def _changed(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._changes += 1
        wake()

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        stop = threading.Event()
        thread = threading.Thread(
            target=self._listen, args=(wake, stop), name="site-listen", daemon=True
        )
        thread.start()

        def stopper() -> None:
            stop.set()
            thread.join(self.check_interval + CONNECT_TIMEOUT + 1)

        return stopper

    def _listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        backoff = 0.0
        failing: str | None = None
        while not stop.is_set():
            try:
                with psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT,
                    application_name="llmp-site-listen",
                ) as conn:
                    migrate(conn)  # the tables, if this certd is the first to start
                    conn.execute(f"LISTEN {SITE_CHANNEL}")
                    generation = _generation(conn)
                    self._changed(wake)  # whatever changed while we were not listening
                    if failing is not None:
                        log.info("site database reachable again")
                    backoff, failing = 0.0, None
                    while not stop.is_set():
                        heard = False
                        for _ in conn.notifies(timeout=self.check_interval, stop_after=1):
                            heard = True
                        now = _generation(conn)
                        if heard or now != generation:
                            generation = now
                            self._changed(wake)
            except psycopg.Error as exc:
                if str(exc) != failing:
                    log.error("site database unusable", extra={"fields": {"error": exc}})
                failing = str(exc)
                stop.wait(backoff)
                backoff = min(MAX_BACKOFF, max(0.1, backoff * 2))


def _close(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


def _generation(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """What changes with the site or the shared certificates."""
    row = conn.execute(
        "SELECT (SELECT generation FROM llmp_site), (SELECT max(updated_at) FROM llmp_certificates)"
    ).fetchone()
    return tuple(row) if row else ()


def _site(row: tuple[Any, ...] | None) -> Site:
    if row is None:
        return Site()
    try:
        return Site.from_json(row[0])
    except SiteError as exc:
        raise SiteError(f"the site in the database is not valid: {exc}") from exc
