"""Leadership of a job in PostgreSQL (`shared.leader.Leader`): a session advisory lock per job,
held by a connection of its own.

`lead()` takes the lock with `pg_try_advisory_lock` (never waiting) when not holding it, and
when holding it checks that its connection still works: the lock is the connection's, so a
connection that died (killed, the database restarted, the network gone) has let go of it, and
another process may hold it already. The next `lead()` then connects again and tries once more.

A job whose effect must never overlap another run's does its work through `connection` (in a
transaction): once that connection is gone, so is the lock, and nothing the old leader still
tries can commit, while the new leader can only have the lock once it is gone. A job that acts
outside the database (certbot) has the weaker promise: it learns of a lost hold at its next
`lead()`, so it asks before each step it must not share.

The lock keys are "llmp" in ASCII, then 0x01nn for job number nn of `shared.leader.JOBS`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg

from shared.leader import JOBS

log = logging.getLogger("leader")

CONNECT_TIMEOUT = 5
LOCK_BASE = 0x6C6C6D70_0100


def lock_key(job: str) -> int:
    """The advisory lock key of `job` (one of `shared.leader.JOBS`)."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}")
    return LOCK_BASE + JOBS[job]


class PgLeader:
    def __init__(self, url: str, job: str, application_name: str | None = None) -> None:
        self.url = url
        self.key = lock_key(job)
        self._job = job
        self.application_name = application_name or f"llmp-leader-{job}"
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False

    @property
    def job(self) -> str:
        return self._job

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The connection that holds the lock (only while `lead()` said True)."""
        if self._conn is None or not self._held:
            raise RuntimeError(f"not the leader of {self._job}")
        return self._conn

    def lead(self) -> bool:
        was = self._held
        try:
            if self._held:
                self._check()
            else:
                self._take()
        except psycopg.Error as exc:
            self._drop()
            if was:
                log.warning(
                    "leadership lost", extra={"fields": {"job": self._job, "error": str(exc)}}
                )
            return False
        if self._held and not was:
            log.info("leadership taken", extra={"fields": {"job": self._job}})
        return self._held

    def _take(self) -> None:
        # The connection kept from the last try may have died meanwhile (with the leader's, when
        # the database restarted): then once more on a new one.
        for fresh in (False, True):
            if fresh or self._conn is None or self._conn.closed:
                self._drop()
                self._conn = psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT,
                    application_name=self.application_name,
                )
                fresh = True
            try:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            except psycopg.OperationalError:
                if fresh:
                    raise
                continue
            self._held = bool(row and row[0])
            return

    def _check(self) -> None:
        assert self._conn is not None
        self._conn.execute("SELECT 1")

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def release(self) -> None:
        if self._held and self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self._drop()
